//! Idle: N authenticated sockets (each user in one group, so the handshake auto-joins a room
//! and subscribes) on one gateway, doing nothing but answering pings. Memory per socket from
//! the gateway's `/proc/PID/smaps_rollup` before and after connecting; the gateway's CPU over a
//! window with the default ping interval (25 s).

use std::{sync::atomic::Ordering, time::Duration};

use clap::Args;
use serde_json::json;

use super::{Ctx, Report, Shape, SocketsGuard, setup};
use crate::{
    client::{Clients, GatewayEndpoint},
    stats::{cpu_seconds, memory},
};

#[derive(Clone, Debug, Default, Args)]
pub struct IdleArgs {
    /// Idle sockets on the one gateway [default 5000; smoke 200].
    #[arg(long)]
    pub sockets: Option<usize>,
    /// Members per group (each user is in one) [default 10].
    #[arg(long)]
    pub group_size: Option<usize>,
    /// Seconds the gateway's CPU is watched with every socket idle [default 30; smoke 3].
    #[arg(long)]
    pub window: Option<u64>,
    /// Seconds to let the gateway settle before and after connecting [default 3; smoke 1].
    #[arg(long)]
    pub settle: Option<u64>,
    /// Handshakes in flight while connecting [default 500; smoke 100].
    #[arg(long)]
    pub connect_concurrency: Option<usize>,
}

struct Settings {
    sockets: usize,
    group_size: usize,
    window: u64,
    settle: u64,
    connect_concurrency: usize,
}

impl IdleArgs {
    fn resolve(&self, smoke: bool) -> Settings {
        Settings {
            sockets: self.sockets.unwrap_or(if smoke { 200 } else { 5000 }),
            group_size: self.group_size.unwrap_or(10),
            window: self.window.unwrap_or(if smoke { 3 } else { 30 }),
            settle: self.settle.unwrap_or(if smoke { 1 } else { 3 }),
            connect_concurrency: self.connect_concurrency.unwrap_or(if smoke { 100 } else { 500 }),
        }
    }
}

pub async fn run(ctx: &Ctx, args: &IdleArgs) -> anyhow::Result<Report> {
    let s = args.resolve(ctx.smoke);
    let repeat = ctx.repeat(
        "idle",
        &[
            ("sockets", s.sockets.to_string()),
            ("group-size", s.group_size.to_string()),
            ("window", s.window.to_string()),
            ("settle", s.settle.to_string()),
            ("connect-concurrency", s.connect_concurrency.to_string()),
        ],
    );
    ctx.check_sockets(s.sockets)?;
    let mut report = Report::new("idle", ctx, repeat);
    let mut setup = setup(ctx, Shape::new(1, 1, s.sockets, s.group_size)).await?;
    let plan = setup.plan.clone();
    let gateway = setup.topology.gateways()[0];
    let (gateway_pid, gateway_addr) = (gateway.pid, gateway.addr);
    report.line(
        "shape",
        format!(
            "{} sockets on one gateway ({} groups of {}), default ping interval",
            s.sockets,
            plan.groups.len(),
            s.group_size
        ),
    );

    tokio::time::sleep(Duration::from_secs(s.settle)).await;
    let before = memory(gateway_pid).ok_or_else(|| anyhow::anyhow!("cannot read the gateway's smaps_rollup"))?;
    let bench_before = memory(std::process::id()).unwrap_or_default();
    let clients = Clients::new(
        plan.clone(),
        ctx.client_config(vec![GatewayEndpoint::direct(gateway_addr)], None),
    );
    let _guard = SocketsGuard(clients.clone());
    let sockets: Vec<(u32, usize)> = (0..s.sockets).map(|u| (u as u32, 0)).collect();
    let connected = clients.connect_all(sockets, s.connect_concurrency).await;
    if connected.failed > 0 {
        report.problem(format!(
            "{} sockets failed to connect: {}",
            connected.failed,
            clients.error_summary()
        ));
    }
    tokio::time::sleep(Duration::from_secs(s.settle)).await;
    let after = memory(gateway_pid).ok_or_else(|| anyhow::anyhow!("the gateway is gone"))?;
    let bench_after = memory(std::process::id()).unwrap_or_default();
    let n = connected.ok.max(1) as f64;
    let rss_each = after.rss_kib.saturating_sub(before.rss_kib) as f64 / n;
    let pss_each = after.pss_kib.saturating_sub(before.pss_kib) as f64 / n;
    report.line(
        "connected",
        format!("{} of {} in {:.2} s", connected.ok, s.sockets, connected.seconds),
    );
    report.line(
        "gateway memory",
        format!(
            "RSS {} -> {} KiB, PSS {} -> {} KiB",
            before.rss_kib, after.rss_kib, before.pss_kib, after.pss_kib
        ),
    );
    report.line(
        "per idle socket",
        format!("RSS {rss_each:.2} KiB, PSS {pss_each:.2} KiB"),
    );
    report.line(
        "bench side per socket",
        format!(
            "RSS {:.2} KiB",
            bench_after.rss_kib.saturating_sub(bench_before.rss_kib) as f64 / n
        ),
    );

    let pings_before = clients.pings.load(Ordering::Relaxed);
    let cpu_before = cpu_seconds(gateway_pid).unwrap_or_default();
    tokio::time::sleep(Duration::from_secs(s.window)).await;
    let cpu_after = cpu_seconds(gateway_pid).unwrap_or_default();
    let pings = clients.pings.load(Ordering::Relaxed) - pings_before;
    let cpu = cpu_after - cpu_before;
    report.line(
        &format!("gateway CPU over {} s", s.window),
        format!(
            "{cpu:.2} s ({:.1}% of a core), {:.2} ms per socket; {pings} pings answered",
            cpu / s.window as f64 * 100.0,
            cpu * 1000.0 / n
        ),
    );
    let still = clients.connected_now.load(Ordering::Relaxed);
    let disconnects = clients.disconnects.load(Ordering::Relaxed);
    report.line("still connected", format!("{still} ({disconnects} disconnects)"));
    if disconnects > 0 {
        report.note(format!("socket errors: {}", clients.error_summary()));
    }
    report.require_zero(&[("disconnects", disconnects)]);
    for crash in setup.topology.crashed(&[]) {
        report.problem(crash);
    }
    report.target(
        rss_each <= 10.0 && pss_each <= 10.0,
        format!(
            "<= 10 KiB per idle socket (at 50,000): RSS {rss_each:.2} KiB, PSS {pss_each:.2} KiB at {}",
            connected.ok
        ),
    );
    if s.sockets < 50_000 {
        report.note(format!(
            "measured at {} sockets, not 50,000 (this process's open-file limit is {})",
            s.sockets, ctx.fd_limit
        ));
    }
    report.set("sockets", json!(s.sockets));
    report.set("connected", json!(connected.ok));
    report.set("rss_kib_per_socket", json!(rss_each));
    report.set("pss_kib_per_socket", json!(pss_each));
    report.set("gateway_rss_kib", json!([before.rss_kib, after.rss_kib]));
    report.set("gateway_pss_kib", json!([before.pss_kib, after.pss_kib]));
    report.set("window_s", json!(s.window));
    report.set("gateway_cpu_s", json!(cpu));
    report.set("gateway_core_pct", json!(cpu / s.window as f64 * 100.0));
    report.set("pings", json!(pings));
    setup.topology.keep_dir |= !report.problems.is_empty();
    Ok(report)
}
