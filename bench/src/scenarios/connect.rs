//! Connect: how fast sockets get through the full handshake (TCP, WebSocket upgrade, Engine.IO
//! open, Socket.IO CONNECT with a JWT, auto-join of every group of the user, bus
//! subscriptions) with a bounded number in flight. Afterwards one message per group (a sample)
//! checks that auto-join put every socket in its rooms.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use clap::Args;
use futures::StreamExt;
use serde_json::json;

use super::{Ctx, Report, Shape, SocketsGuard, setup};
use crate::{client::Clients, rest::PostStats};

/// Groups checked for auto-join after connecting (one message each).
const CHECKED_GROUPS: usize = 200;

#[derive(Clone, Debug, Default, Args)]
pub struct ConnectArgs {
    /// Sockets, one per user [default 5000; smoke 300].
    #[arg(long)]
    pub sockets: Option<usize>,
    /// Groups each user is in (joined at the handshake) [default 3].
    #[arg(long)]
    pub groups_per_user: Option<usize>,
    /// Members per group [default 10].
    #[arg(long)]
    pub group_size: Option<usize>,
    /// Handshakes in flight [default 256; smoke 64].
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Gateways the sockets are spread over (1 or 2) [default 2].
    #[arg(long)]
    pub gateways: Option<usize>,
}

struct Settings {
    sockets: usize,
    groups_per_user: usize,
    group_size: usize,
    concurrency: usize,
    gateways: usize,
}

impl ConnectArgs {
    fn resolve(&self, smoke: bool) -> Settings {
        Settings {
            sockets: self.sockets.unwrap_or(if smoke { 300 } else { 5000 }),
            groups_per_user: self.groups_per_user.unwrap_or(3),
            group_size: self.group_size.unwrap_or(10),
            concurrency: self.concurrency.unwrap_or(if smoke { 64 } else { 256 }),
            gateways: self.gateways.unwrap_or(2).clamp(1, 8),
        }
    }
}

pub async fn run(ctx: &Ctx, args: &ConnectArgs) -> anyhow::Result<Report> {
    let s = args.resolve(ctx.smoke);
    let repeat = ctx.repeat(
        "connect",
        &[
            ("sockets", s.sockets.to_string()),
            ("groups-per-user", s.groups_per_user.to_string()),
            ("group-size", s.group_size.to_string()),
            ("concurrency", s.concurrency.to_string()),
            ("gateways", s.gateways.to_string()),
        ],
    );
    ctx.check_sockets(s.sockets)?;
    let mut report = Report::new("connect", ctx, repeat);
    let shape = Shape::new(1, s.gateways, s.sockets, s.group_size).groups_per_user(s.groups_per_user);
    let mut setup = setup(ctx, shape).await?;
    let plan = setup.plan.clone();
    let gateways = setup.topology.gateway_endpoints();
    report.line(
        "shape",
        format!(
            "{} users, each in {} groups ({} groups of {}), over {} gateway(s), {} handshakes in flight",
            s.sockets,
            s.groups_per_user,
            plan.groups.len(),
            s.group_size,
            gateways.len(),
            s.concurrency
        ),
    );
    report.line("set-up", setup.took());

    let clients = Clients::new(plan.clone(), ctx.client_config(gateways.clone(), None));
    let _guard = SocketsGuard(clients.clone());
    let probe = setup.topology.cpu_probe();
    let before = probe.snapshot().await;
    let sockets: Vec<(u32, usize)> = (0..s.sockets).map(|u| (u as u32, u % gateways.len())).collect();
    let connected = clients.connect_all(sockets, s.concurrency).await;
    let after = probe.snapshot().await;
    let rate = connected.ok as f64 / connected.seconds.max(1e-9);
    let handshake = clients.handshake_latency.summary();
    report.line(
        "connected",
        format!(
            "{} of {} in {:.2} s: {rate:.0} connects/s ({} failed)",
            connected.ok, s.sockets, connected.seconds, connected.failed
        ),
    );
    report.line("handshake latency", handshake.line());
    report.cpu(
        &after.since(&before),
        after.wall_seconds_since(&before),
        Some((connected.ok as f64 / 1000.0, "1k connects")),
    );
    if connected.failed > 0 {
        report.problem(format!(
            "{} sockets failed to connect: {}",
            connected.failed,
            clients.error_summary()
        ));
    }

    // Auto-join check: one message into each of a sample of groups reaches every member.
    let checked: Vec<u32> = (0..plan.groups.len().min(CHECKED_GROUPS) as u32).collect();
    let stats = Arc::new(PostStats::new(plan.groups.len()));
    futures::stream::iter(checked.iter().copied())
        .for_each_concurrent(16, |g| {
            let (rest, plan, stats, apis) = (setup.rest.clone(), plan.clone(), stats.clone(), setup.apis.clone());
            async move {
                let group = &plan.groups[g as usize];
                let poster = &plan.users[group.members[0] as usize];
                let content = format!("b:{g}:{}", crate::stats::now_us());
                match rest
                    .post_message(&apis[0], &group.id, &poster.authorization, &content)
                    .await
                {
                    Ok(seq) => {
                        stats.acked_seq[g as usize].fetch_max(seq, Ordering::AcqRel);
                        stats.ok.fetch_add(1, Ordering::Relaxed);
                        stats
                            .expected_deliveries
                            .fetch_add(group.members.len() as u64, Ordering::Relaxed);
                    }
                    Err(_) => {
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
        .await;
    let expected = stats.expected_deliveries.load(Ordering::Relaxed);
    clients
        .wait_for(Duration::from_secs(10), |c| {
            c.delivered.load(Ordering::Relaxed) >= expected
        })
        .await;
    let lost = clients.lost(&stats.acked_snapshot());
    report.line(
        "auto-join check",
        format!(
            "1 message into each of {} groups: {} of {expected} deliveries, lost {lost}",
            checked.len(),
            clients.delivered.load(Ordering::Relaxed)
        ),
    );
    report.require_zero(&[
        ("lost", lost),
        ("check posts failed", stats.failed.load(Ordering::Relaxed)),
        ("duplicates", clients.duplicates.load(Ordering::Relaxed)),
        ("disconnects", clients.disconnects.load(Ordering::Relaxed)),
    ]);
    for crash in setup.topology.crashed(&[]) {
        report.problem(crash);
    }
    report.target(
        rate >= 5000.0,
        format!(">= 5,000 connects/s with auth and auto-join: {rate:.0}/s"),
    );
    report.set("sockets", json!(s.sockets));
    report.set("groups_per_user", json!(s.groups_per_user));
    report.set("gateways", json!(gateways.len()));
    report.set("concurrency", json!(s.concurrency));
    report.set("connected", json!(connected.ok));
    report.set("failed", json!(connected.failed));
    report.set("connects_per_s", json!(rate));
    report.set("handshake_latency", handshake.json());
    report.set("lost", json!(lost));
    setup.topology.keep_dir |= !report.problems.is_empty();
    Ok(report)
}
