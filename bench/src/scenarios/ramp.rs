//! Ramp: the offered rate stepped up (500, 1,000, 2,000, 3,000, 4,000 and 5,000 posts/s by
//! default), each step for a while, with the same sockets, servers and database throughout:
//! where delivery latency bends, and where acknowledged posts stop following the offered rate.
//! The shape is the soak's (500 sockets in groups of 10 over the gateways, open-loop REST posts
//! with `clientMessageId`s). After each step the bench waits for the step's deliveries before
//! the next begins, so each row holds its own posts' latency.
//!
//! Sockets reconnect like the official client (with `auth.sync`) if a gateway lets one go, and
//! sync a group after a gap, so overload shows as latency, failed and shed posts, reconnects and
//! gaps, never as lost messages. Past the knee those are figures, not failures; a lost message,
//! an unexpected event or a crash fails the run, and so does any error in a smoke run (whose
//! rates are low).

use std::{
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use clap::Args;
use serde_json::json;
use tokio::sync::watch;

use super::{
    Ctx, Report, Setup, Shape, SocketsGuard,
    intervals::{Row, Sampler, Table, format_duration, parse_duration},
    setup,
};
use crate::{
    chart::{self, Panel, Series},
    client::Clients,
    rest::{PostStats, open_loop},
};

/// Reconnection delay range of a socket a gateway let go, ms (socket.io's 1 s ± 50%).
const RECONNECT_MS: (u64, u64) = (500, 1500);

#[derive(Clone, Debug, Default, Args)]
pub struct RampArgs {
    /// Offered rates in posts/s, comma-separated, one step each [default
    /// 500,1000,2000,3000,4000,5000; smoke 50,100,200].
    #[arg(long, value_delimiter = ',')]
    pub rates: Vec<f64>,
    /// The length of each step: seconds, or a number with s or m [default 10s; smoke 2s].
    #[arg(long, value_parser = parse_duration)]
    pub step: Option<Duration>,
    /// Longest wait after a step for its deliveries before the next step [default 10s; smoke 5s].
    #[arg(long, value_parser = parse_duration)]
    pub drain: Option<Duration>,
    /// Posting at the first rate before the first step (connection pools, caches), shown as a
    /// row of its own [default 2s; smoke 1s].
    #[arg(long, value_parser = parse_duration)]
    pub warmup: Option<Duration>,
    /// Sockets, one per user [default 500].
    #[arg(long)]
    pub sockets: Option<usize>,
    /// Members per group (K); groups = sockets / K [default 10].
    #[arg(long)]
    pub group_size: Option<usize>,
    /// The delivery p99 (ms) a step must stay under to count as kept up with [default 25].
    #[arg(long)]
    pub p99_target_ms: Option<f64>,
    /// Handshakes in flight while connecting [default 500; smoke 100].
    #[arg(long)]
    pub connect_concurrency: Option<usize>,
    /// Posts waiting for an answer at most; a post due beyond is shed [default 2000, less if the
    /// open-file limit leaves less beside the sockets].
    #[arg(long)]
    pub max_inflight: Option<usize>,
    /// Write the charts (latency against offered rate, acknowledged against offered) to this
    /// SVG file.
    #[arg(long)]
    pub chart: Option<PathBuf>,
}

struct Settings {
    rates: Vec<f64>,
    step: Duration,
    drain: Duration,
    warmup: Duration,
    sockets: usize,
    group_size: usize,
    p99_target_ms: f64,
    connect_concurrency: usize,
    max_inflight: usize,
}

impl RampArgs {
    fn resolve(&self, smoke: bool) -> Settings {
        let rates = if !self.rates.is_empty() {
            self.rates.clone()
        } else if smoke {
            vec![50.0, 100.0, 200.0]
        } else {
            vec![500.0, 1000.0, 2000.0, 3000.0, 4000.0, 5000.0]
        };
        Settings {
            rates,
            step: self.step.unwrap_or(Duration::from_secs(if smoke { 2 } else { 10 })),
            drain: self.drain.unwrap_or(Duration::from_secs(if smoke { 5 } else { 10 })),
            warmup: self.warmup.unwrap_or(Duration::from_secs(if smoke { 1 } else { 2 })),
            sockets: self.sockets.unwrap_or(500),
            group_size: self.group_size.unwrap_or(10),
            p99_target_ms: self.p99_target_ms.unwrap_or(25.0),
            connect_concurrency: self.connect_concurrency.unwrap_or(if smoke { 100 } else { 500 }),
            max_inflight: self.max_inflight.unwrap_or(2000),
        }
    }
}

/// One step: its offered rate and its figures.
struct Step {
    offered: f64,
    row: Row,
}

impl Step {
    /// Acknowledged at 99% of the offered rate or more, nothing failed or shed, p99 on target.
    fn kept_up(&self, p99_target_ms: f64) -> bool {
        self.row.posts_per_s >= 0.99 * self.offered
            && self.row.errors == 0
            && self.row.lost == 0
            && self.row.latency.count > 0
            && self.row.latency.p99 <= p99_target_ms
    }
}

pub async fn run(ctx: &Ctx, args: &RampArgs) -> anyhow::Result<Report> {
    let mut s = args.resolve(ctx.smoke);
    s.max_inflight = s.max_inflight.min(ctx.inflight_budget(s.sockets));
    if let Some(bad) = s.rates.iter().find(|r| !r.is_finite() || **r <= 0.0) {
        anyhow::bail!("--rates: {bad} is not a rate (posts/s above zero)");
    }
    let rates_text = s.rates.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(",");
    let mut repeat_args = vec![
        ("rates", rates_text.clone()),
        ("step", format_duration(s.step)),
        ("drain", format_duration(s.drain)),
        ("warmup", format_duration(s.warmup)),
        ("sockets", s.sockets.to_string()),
        ("group-size", s.group_size.to_string()),
        ("p99-target-ms", s.p99_target_ms.to_string()),
        ("connect-concurrency", s.connect_concurrency.to_string()),
        ("max-inflight", s.max_inflight.to_string()),
    ];
    if let Some(path) = &args.chart {
        repeat_args.push(("chart", super::shell_quote(&path.display().to_string())));
    }
    let repeat = ctx.repeat("ramp", &repeat_args);
    ctx.check_sockets(s.sockets)?;
    let mut report = Report::new("ramp", ctx, repeat);
    let run_length = (s.step + s.drain) * s.rates.len() as u32;
    let mut setup = setup(ctx, Shape::new(2, 2, s.sockets, s.group_size).lasting(run_length)).await?;
    let plan = setup.plan.clone();
    let gateways = setup.topology.gateway_endpoints();
    let groups = plan.groups.len();
    report.line(
        "shape",
        format!(
            "{} sockets in {groups} groups of {} over {} gateway(s); {rates_text} posts/s, {} each, over {} API process(es)",
            s.sockets,
            s.group_size,
            gateways.len(),
            format_duration(s.step),
            setup.apis.len()
        ),
    );
    report.line("set-up", setup.took());

    let clients = Clients::new(plan.clone(), ctx.client_config(gateways.clone(), Some(RECONNECT_MS)));
    let _guard = SocketsGuard(clients.clone());
    let connected = clients
        .connect_spread(s.sockets, gateways.len(), s.connect_concurrency)
        .await;
    report.connected(&connected, s.sockets, &clients);

    let probe = setup.topology.cpu_probe();
    let table = Table::new("offered", &probe);
    let stats = Arc::new(PostStats::new(groups));
    let mut runner = Runner {
        setup: &setup,
        clients: &clients,
        stats: &stats,
        sampler: Sampler::start(probe.clone(), clients.clone(), stats.clone()).await,
        max_inflight: s.max_inflight,
        drain: s.drain,
    };
    println!(
        "\n== ramp ({}): {} per step, up to {} for its deliveries ==",
        ctx.launch.target.as_str(),
        format_duration(s.step),
        format_duration(s.drain)
    );
    println!("  {}", table.header());
    let warmup = runner.post(s.rates[0], s.warmup, "warm-up".to_owned()).await;
    println!("  {}", table.line(&warmup));
    let mut steps: Vec<Step> = Vec::new();
    for &rate in &s.rates {
        let row = runner.post(rate, s.step, format!("{rate}/s")).await;
        println!("  {}", table.line(&row));
        steps.push(Step { offered: rate, row });
    }

    let acked = stats.acked_snapshot();
    clients.wait_for(s.drain, |c| c.lost(&acked) == 0).await;
    let lost = clients.lost(&acked);
    let ok = stats.ok.load(Ordering::Relaxed);
    let failed = stats.failed.load(Ordering::Relaxed);
    let shed = stats.shed.load(Ordering::Relaxed);
    let kept_up = steps
        .iter()
        .take_while(|st| st.kept_up(s.p99_target_ms))
        .last()
        .map(|st| st.offered);
    report.line(
        "kept up to",
        match kept_up {
            Some(rate) => format!(
                "{rate} posts/s (every step up to it: >= 99% acknowledged, no errors, p99 <= {} ms)",
                s.p99_target_ms
            ),
            None => format!(
                "no step (>= 99% acknowledged, no errors, p99 <= {} ms)",
                s.p99_target_ms
            ),
        },
    );
    report.line(
        "posts",
        format!(
            "{ok} acknowledged of {} due ({failed} failed, {shed} shed)",
            stats.scheduled.load(Ordering::Relaxed)
        ),
    );
    let duplicates = clients.duplicates.load(Ordering::Relaxed);
    let resyncs = clients.resyncs.load(Ordering::Relaxed);
    let gaps = clients.gaps.load(Ordering::Relaxed);
    let unexpected = clients.unexpected.load(Ordering::Relaxed);
    let disconnects = clients.disconnects.load(Ordering::Relaxed);
    report.gateway_counters(&setup.topology.gateway_counters().await);
    report.line(
        "lost / errors",
        format!(
            "lost {lost}; gaps {gaps}; post errors {failed}, shed {shed}, duplicates {duplicates}, unexpected {unexpected}, disconnects {disconnects} (sockets reconnect)"
        ),
    );
    if failed > 0 {
        report.note(format!("post errors: {}", stats.error_summary()));
    }
    if disconnects > 0 || unexpected > 0 {
        report.note(format!("socket events: {}", clients.error_summary()));
    }
    report.require_zero(&[
        ("lost", lost),
        // A sync re-sends what follows its afterSeq (by design): duplicates are expected after
        // re-syncs only.
        (
            "duplicates without a re-sync",
            if resyncs == 0 { duplicates } else { 0 },
        ),
        ("unexpected events", unexpected),
    ]);
    // Past the knee, failed and shed posts, dropped sockets and gaps (each synced like a correct
    // client does) are what overload looks like; at a smoke run's low rates they are failures.
    if ctx.smoke {
        report.require_zero(&[
            ("post errors", failed),
            ("posts shed", shed),
            ("disconnects", disconnects),
            ("gaps in a socket's seq", gaps),
        ]);
    }
    if ok == 0 {
        report.problem("no post was acknowledged");
    }
    for crash in setup.topology.crashed(&[]) {
        report.problem(crash);
    }

    if let Some(path) = &args.chart {
        let title = format!(
            "community-chat ramp: {} sockets in groups of {}, {} per step ({} target)",
            s.sockets,
            s.group_size,
            format_duration(s.step),
            ctx.launch.target.as_str()
        );
        match chart::write(path, &title, &charts(&steps, s.p99_target_ms)) {
            Ok(()) => report.line("chart", path.display().to_string()),
            Err(e) => report.problem(format!("could not write the chart {}: {e}", path.display())),
        }
    }

    report.set("rates", json!(s.rates));
    report.set("step_s", json!(s.step.as_secs_f64()));
    report.set("sockets", json!(s.sockets));
    report.set("group_size", json!(s.group_size));
    report.set("kept_up_to", json!(kept_up));
    report.set("posts_ok", json!(ok));
    report.set("posts_failed", json!(failed));
    report.set("posts_shed", json!(shed));
    report.set("lost", json!(lost));
    report.set(
        "steps",
        json!(
            steps
                .iter()
                .map(|st| {
                    let mut row = st.row.json();
                    row["offered_per_s"] = json!(st.offered);
                    row
                })
                .collect::<Vec<_>>()
        ),
    );
    setup.topology.keep_dir |= !report.problems.is_empty();
    Ok(report)
}

/// What every step of a run shares.
struct Runner<'a> {
    setup: &'a Setup,
    clients: &'a Clients,
    stats: &'a Arc<PostStats>,
    sampler: Sampler,
    max_inflight: usize,
    /// Longest wait for a step's deliveries.
    drain: Duration,
}

impl Runner<'_> {
    /// Posts at `rate` for `length`, waits for the deliveries (at most the drain time), and
    /// returns the stretch's row: acknowledged per second of posting (the drain is not posting
    /// time), and as lost every acknowledged delivery that had not arrived after the drain.
    async fn post(&mut self, rate: f64, length: Duration, label: String) -> Row {
        let plan = &self.setup.plan;
        let posting = Instant::now();
        let (_stop, stop_rx) = watch::channel(false);
        open_loop(
            self.setup.rest.clone(),
            plan.clone(),
            self.setup.apis.clone(),
            Arc::new((0..plan.groups.len() as u32).collect()),
            self.stats.clone(),
            rate,
            length,
            self.max_inflight,
            stop_rx,
        )
        .await;
        let posting_seconds = posting.elapsed().as_secs_f64();
        let acked = self.stats.acked_snapshot();
        self.clients.wait_for(self.drain, |c| c.lost(&acked) == 0).await;
        let mut row = self.sampler.sample(label).await;
        row.posts_per_s = row.posts as f64 / posting_seconds.max(1e-9);
        row.lost = self.clients.lost(&acked);
        row
    }
}

/// Latency against the offered rate, and acknowledged against offered.
fn charts(steps: &[Step], p99_target_ms: f64) -> Vec<Panel> {
    let offered: Vec<f64> = steps.iter().map(|st| st.offered).collect();
    let (lo, hi) = (
        offered.iter().copied().fold(f64::INFINITY, f64::min),
        offered.iter().copied().fold(0.0, f64::max),
    );
    let series = |name: &str, value: &dyn Fn(&Step) -> f64| {
        Series::new(name, steps.iter().map(|st| (st.offered, value(st))).collect())
    };
    vec![
        Panel {
            title: "Delivery latency, POST to socket, against offered rate".into(),
            x_label: "offered posts/s".into(),
            y_label: "ms (log scale)".into(),
            series: vec![
                series("p50", &|st| st.row.latency.p50),
                series("p99", &|st| st.row.latency.p99),
                series("max", &|st| st.row.latency.max),
                Series::new("p99 target", vec![(lo, p99_target_ms), (hi, p99_target_ms)]).dashed(),
            ],
            log_y: true,
        },
        Panel {
            title: "Acknowledged against offered".into(),
            x_label: "offered posts/s".into(),
            y_label: "posts/s".into(),
            series: vec![
                series("acknowledged", &|st| st.row.posts_per_s),
                Series::new("offered", vec![(lo, lo), (hi, hi)]).dashed(),
            ],
            log_y: false,
        },
    ]
}
