//! Persist: C closed-loop REST posters, each into a group of its own (no lock shared between
//! them), as fast as the durable commits are acknowledged; beside it, in the same run, pgbench's
//! ceiling for one-row insert transactions on the same database with the same client count.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use clap::Args;
use serde_json::json;

use super::{Ctx, Report, Shape, setup};
use crate::{
    rest::{PostStats, closed_loop},
    topology::{Target, pgbench_insert_ceiling, psql},
};

#[derive(Clone, Debug, Default, Args)]
pub struct PersistArgs {
    /// Concurrent posters (C), also pgbench's client count [default 64; smoke 4].
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Seconds of posting, and of pgbench [default 10; smoke 2].
    #[arg(long)]
    pub duration: Option<u64>,
    /// Members per group (each poster has a group of its own) [default 10; smoke 2].
    #[arg(long)]
    pub group_size: Option<usize>,
}

struct Settings {
    concurrency: usize,
    duration: u64,
    group_size: usize,
}

impl PersistArgs {
    fn resolve(&self, smoke: bool) -> Settings {
        Settings {
            concurrency: self.concurrency.unwrap_or(if smoke { 4 } else { 64 }),
            duration: self.duration.unwrap_or(if smoke { 2 } else { 10 }),
            group_size: self.group_size.unwrap_or(if smoke { 2 } else { 10 }),
        }
    }
}

pub async fn run(ctx: &Ctx, args: &PersistArgs) -> anyhow::Result<Report> {
    let s = args.resolve(ctx.smoke);
    let repeat = ctx.repeat(
        "persist",
        &[
            ("concurrency", s.concurrency.to_string()),
            ("duration", s.duration.to_string()),
            ("group-size", s.group_size.to_string()),
        ],
    );
    let mut report = Report::new("persist", ctx, repeat);
    let mut setup = setup(ctx, Shape::new(2, 0, s.concurrency * s.group_size, s.group_size)).await?;
    let plan = setup.plan.clone();
    report.line(
        "shape",
        format!(
            "{} closed-loop posters, each into its own group of {}, over {} API process(es), {} s",
            s.concurrency,
            s.group_size,
            setup.apis.len(),
            s.duration
        ),
    );
    if let Some((_, url)) = &setup.topology.database {
        let settings = psql(
            url,
            "SELECT current_setting('synchronous_commit') || ', fsync ' || current_setting('fsync')",
        )?;
        report.line("Postgres durability", format!("synchronous_commit {}", settings.trim()));
    }

    let probe = setup.topology.cpu_probe();
    let before = probe.snapshot().await;
    let stats = Arc::new(PostStats::new(plan.groups.len()));
    let targets = Arc::new((0..plan.groups.len() as u32).collect::<Vec<_>>());
    let started = Instant::now();
    closed_loop(
        setup.rest.clone(),
        plan.clone(),
        setup.apis.clone(),
        targets,
        stats.clone(),
        Duration::from_secs(s.duration),
    )
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let after = probe.snapshot().await;
    let ok = stats.ok.load(Ordering::Relaxed);
    let failed = stats.failed.load(Ordering::Relaxed);
    let rate = ok as f64 / elapsed;
    let latency = stats.latency.summary();
    report.line(
        "acknowledged",
        format!("{ok} messages in {elapsed:.2} s: {rate:.0}/s ({failed} failed)"),
    );
    report.line("POST latency", latency.line());
    let used = after.since(&before);
    report.cpu(
        &used,
        after.wall_seconds_since(&before),
        Some((ok as f64 / 1000.0, "1k messages")),
    );
    let batching = setup.topology.post_batch_counters().await;
    let counter = |name: &str| batching.iter().find(|(n, _)| n == name).map_or(0.0, |(_, v)| *v);
    let (batches, carried) = (counter("db_post_batches_total"), counter("db_post_batch_posts_total"));
    if batches > 0.0 {
        report.line(
            "group commit",
            format!(
                "{batches:.0} statements carried {carried:.0} posts ({:.1} per commit), {:.0} retried alone",
                carried / batches,
                counter("db_post_batch_retries_total")
            ),
        );
        report.set("posts_per_commit", json!(carried / batches));
    }
    if failed > 0 {
        report.note(format!("post errors: {}", stats.error_summary()));
    }
    report.require_zero(&[("post errors", failed)]);
    if ok == 0 {
        report.problem("no message was acknowledged");
    }
    for crash in setup.topology.crashed(&[]) {
        report.problem(crash);
    }
    report.set("concurrency", json!(s.concurrency));
    report.set("duration_s", json!(s.duration));
    report.set("messages", json!(ok));
    report.set("messages_per_s", json!(rate));
    report.set("errors", json!(failed));
    report.set("latency", latency.json());

    let ceiling = match (&setup.topology.launch.target, &setup.topology.database) {
        (Target::Scaled, Some((_, url))) => {
            pgbench_insert_ceiling(url, &setup.topology.dir, s.concurrency, s.duration.max(1))?
        }
        _ => None,
    };
    match ceiling {
        Some((tps, command)) => {
            let ratio = rate / tps;
            report.line(
                "pgbench ceiling",
                format!("{tps:.0} one-row insert transactions/s ({command})"),
            );

            report.line("ratio", format!("{:.0}% of the ceiling", ratio * 100.0));
            report.set("pgbench_tps", json!(tps));
            report.set("ratio", json!(ratio));
            report.target(
                ratio >= 0.70,
                format!(">= 70% of the pgbench ceiling: {:.0}%", ratio * 100.0),
            );
        }
        None if ctx.launch.target == Target::Scaled => {
            report.note("pgbench not found: the single-row insert ceiling was not measured");
        }
        None => report.note("standalone (SQLite): no pgbench ceiling"),
    }
    report.target(
        rate >= 5000.0,
        format!(">= 5,000 acknowledged durable messages/s: {rate:.0}/s"),
    );
    // Drop the topology (and so the database) before the next scenario.
    setup.topology.keep_dir |= !report.problems.is_empty();
    Ok(report)
}
