//! `community-chat-bench`: the load generator and benchmark scenarios of community-chat.
//!
//! Each scenario starts its own servers ([`topology`]) or, with `--target external`, drives
//! servers it did not start; it drives them with sockets ([`client`]: Engine.IO v4 /
//! Socket.IO v5 over WebSocket, spoken directly) and REST posts ([`rest`]: open or closed loop),
//! measures ([`stats`]; per interval in [`scenarios::intervals`]), prints its figures with the
//! exact command that repeats it, draws the long runs as SVG charts ([`chart`]), and stops
//! everything it started. `--smoke` runs a small version of every scenario and fails (exit 1)
//! if anything was lost or errored.
//!
//! The binary is a thin wrapper around [`run_with_args`], which the root package's
//! `tests/bench_smoke.rs` also calls against the debug server binary.

pub mod chart;
pub mod client;
pub mod plan;
pub mod rest;
pub mod scenarios;
pub mod stats;
pub mod topology;

use std::{ffi::OsString, path::PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::{
    plan::Tokens,
    scenarios::{ConnectArgs, Ctx, FanoutArgs, IdleArgs, PersistArgs, RampArgs, Report, SoakArgs, StormArgs},
    topology::{External, Launch, Target},
};

#[derive(Debug, Parser)]
#[command(
    name = "community-chat-bench",
    about = "Benchmarks community-chat: fan-out, persist, idle, connect, reconnect-storm, soak and ramp scenarios",
    long_about = "Benchmarks community-chat. Each scenario starts its own servers (a scratch Postgres \
        database, migrate, 2 api + 2 gateway processes, one Redis channel prefix; or one `serve` \
        with --target standalone), drives them over REST and Socket.IO, prints its figures and the \
        command that repeats it, and stops everything it started. With --target external it drives \
        servers it did not start (--api-url, --gateway-url, and --jwt-secret or --token-command), \
        without their CPU figures: fanout, soak, ramp and connect. Without a scenario it runs them \
        all. --smoke runs small versions and exits 1 if anything was lost or errored."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,

    #[command(subcommand)]
    pub scenario: Option<Scenario>,
}

#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Options of every scenario")]
pub struct Global {
    /// Which servers to start, or `external` to drive servers the bench did not start.
    #[arg(long, value_enum, default_value_t = Target::Scaled, global = true)]
    pub target: Target,

    /// External target: base URL of the REST API (API processes or their load balancer);
    /// repeat it for several, posts go round-robin.
    #[arg(long = "api-url", value_name = "URL", global = true)]
    pub api_urls: Vec<String>,

    /// External target: Socket.IO endpoint (http:// or ws://, plain WebSocket) of the gateways or
    /// their load balancer; repeat it for several, sockets are spread round-robin.
    #[arg(long = "gateway-url", value_name = "URL", global = true)]
    pub gateway_urls: Vec<String>,

    /// External target: the servers' HS256 JWT secret; the bench mints its users' tokens with it.
    #[arg(long, env = "BENCH_JWT_SECRET", hide_env_values = true, global = true)]
    pub jwt_secret: Option<String>,

    /// External target: a shell command that prints a token for one user, run once per user
    /// with {org} and {email} replaced (also in $BENCH_ORG and $BENCH_EMAIL), e.g.
    /// 'community-chat token --org {org} --email {email} --ttl 12h'.
    /// Taken over --jwt-secret when both are given.
    #[arg(long, value_name = "COMMAND", global = true)]
    pub token_command: Option<String>,

    /// External target: each scenario run posts in the org <prefix>-<random>, apart from every
    /// other tenant.
    #[arg(long, default_value = "bench", global = true)]
    pub org_prefix: String,

    /// Post without a clientMessageId (by default every post carries a fresh one, as the README
    /// asks of clients).
    #[arg(long, global = true)]
    pub no_client_message_id: bool,

    /// The community-chat server binary. Default: $CARGO_TARGET_DIR/release/community-chat, else
    /// the one beside this executable, else target/release/community-chat of this workspace.
    #[arg(long, env = "COMMUNITY_CHAT_BIN", global = true)]
    pub bin: Option<PathBuf>,

    /// Small sizes for every scenario (CI): about a minute in all; exit 1 on any loss or error.
    #[arg(long, global = true)]
    pub smoke: bool,

    /// Postgres URL used to create and drop the bench's own database (trust auth expected).
    #[arg(
        long,
        env = "BENCH_DATABASE_ADMIN_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        global = true
    )]
    pub database_admin_url: String,

    /// Redis the scaled servers share (each run uses a channel prefix of its own).
    #[arg(
        long,
        env = "BENCH_REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        global = true
    )]
    pub redis_url: String,

    /// Number of loopback source addresses the sockets are spread over (127.0.0.2, ...).
    #[arg(long, default_value_t = 8, global = true)]
    pub source_ips: u8,

    /// RUST_LOG of the servers (their default is info: one line per REST request).
    #[arg(long, default_value = "info", global = true)]
    pub server_log: String,

    /// Keep the servers' logs (they are kept anyway when a server fails to start).
    #[arg(long, global = true)]
    pub keep_logs: bool,
}

#[derive(Clone, Debug, Subcommand)]
pub enum Scenario {
    /// S sockets in groups of K over the gateways; R posts/s over REST (open loop): deliveries/s,
    /// POST->socket latency, CPU per 1,000 deliveries per tier, errors, lost.
    Fanout(FanoutArgs),
    /// C closed-loop REST posters (durable commits): messages/s and latency beside pgbench's
    /// single-row insert ceiling on the same database and client count.
    Persist(PersistArgs),
    /// N idle authenticated sockets on one gateway: RSS/PSS per socket, CPU over a window with
    /// the default ping interval.
    Idle(IdleArgs),
    /// Connect rate with auth and auto-join (each user in a few groups).
    Connect(ConnectArgs),
    /// N sockets on one gateway, kill -9 it while posts go on: time until they are back on the
    /// other gateway and caught up (handshake auth.sync), and nothing lost.
    Storm(StormArgs),
    /// A fixed rate for a long time against the same servers: a row per interval of posts/s,
    /// CPU ms per post per tier, delivery p50/p99/max, lost, duplicated; fails on a drift of
    /// Postgres CPU per post or of p99.
    Soak(SoakArgs),
    /// The offered rate stepped up: latency, acknowledged rate and errors per step.
    Ramp(RampArgs),
    /// Every scenario in turn (the default; those an external target allows, with one).
    All,
}

impl Scenario {
    /// Why the scenario cannot drive servers the bench did not start, if it cannot.
    fn needs_own_servers(&self) -> Option<&'static str> {
        match self {
            Scenario::Persist(_) => Some("it runs pgbench on the servers' own database"),
            Scenario::Idle(_) => Some("it reads the gateway process's memory and CPU"),
            Scenario::Storm(_) => Some("it kills one of the gateway processes"),
            Scenario::Fanout(_) | Scenario::Connect(_) | Scenario::Soak(_) | Scenario::Ramp(_) | Scenario::All => None,
        }
    }
}

impl Global {
    fn launch(&self) -> Launch {
        let bin = self.bin.clone().unwrap_or_else(default_server_binary);
        Launch {
            target: self.target,
            bin,
            admin_url: self.database_admin_url.clone(),
            redis_url: self.redis_url.clone(),
            server_log: self.server_log.clone(),
            keep_logs: self.keep_logs,
            external: External {
                api_urls: self.api_urls.clone(),
                gateway_urls: self.gateway_urls.clone(),
                tokens: match (&self.jwt_secret, &self.token_command) {
                    (_, Some(command)) => Some(Tokens::Command(command.clone())),
                    (Some(secret), None) => Some(Tokens::Secret(secret.clone())),
                    (None, None) => None,
                },
                org_prefix: self.org_prefix.clone(),
            },
        }
    }
}

/// The release server binary: under $CARGO_TARGET_DIR, else beside this executable (both are
/// built into the same `release/` folder), else under this workspace's `target/`.
fn default_server_binary() -> PathBuf {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(dir).join("release").join("community-chat"));
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
        && dir.ends_with("release")
    {
        candidates.push(dir.join("community-chat"));
    }
    candidates.push(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("target")
            .join("release")
            .join("community-chat"),
    );
    candidates
        .iter()
        .find(|p| p.is_file())
        .unwrap_or(&candidates[0])
        .clone()
}

/// Raises the open-file limit to the most allowed (the hard limit; beyond it with the right
/// capability). Returns the soft limit now in force.
pub fn raise_fd_limit() -> u64 {
    use rlimit::Resource;
    let Ok((soft, hard)) = Resource::NOFILE.get() else {
        return 0;
    };
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(hard);
    if nr_open > hard && Resource::NOFILE.set(nr_open, nr_open).is_ok() {
        return nr_open;
    }
    if soft < hard && Resource::NOFILE.set(hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// Runs the scenarios the CLI names; `true` when nothing was lost or errored.
pub async fn run(cli: Cli) -> anyhow::Result<bool> {
    let fd_limit = raise_fd_limit();
    let ctx = Ctx {
        launch: cli.global.launch(),
        source_ips: cli.global.source_ips,
        smoke: cli.global.smoke,
        fd_limit,
        client_message_ids: !cli.global.no_client_message_id,
    };
    let external = ctx.launch.target == Target::External;
    let scenario = cli.scenario.unwrap_or(Scenario::All);
    if external {
        ctx.launch.external.check()?;
        if let Some(why) = scenario.needs_own_servers() {
            anyhow::bail!(
                "{} cannot run against --target external: {why}; external targets run fanout, soak, ramp \
                 and connect",
                scenario_name(&scenario)
            );
        }
    }
    eprintln!(
        "community-chat-bench: target {}, {}, open-file limit {fd_limit}{}{}",
        ctx.launch.target.as_str(),
        if external {
            format!(
                "API {}, gateways {}",
                ctx.launch.external.api_urls.join(" "),
                ctx.launch.external.gateway_urls.join(" ")
            )
        } else {
            format!("server {}", ctx.launch.bin.display())
        },
        if ctx.smoke { ", smoke sizes" } else { "" },
        if ctx.client_message_ids {
            ""
        } else {
            ", posts without clientMessageId"
        }
    );
    let scenarios = match scenario {
        Scenario::All => [
            Scenario::Fanout(FanoutArgs::default()),
            Scenario::Persist(PersistArgs::default()),
            Scenario::Idle(IdleArgs::default()),
            Scenario::Connect(ConnectArgs::default()),
            Scenario::Storm(StormArgs::default()),
            Scenario::Soak(SoakArgs::default()),
            Scenario::Ramp(RampArgs::default()),
        ]
        .into_iter()
        .filter(|s| !external || s.needs_own_servers().is_none())
        .collect(),
        one => vec![one],
    };
    let mut reports: Vec<Report> = Vec::new();
    for scenario in scenarios {
        let report = match &scenario {
            Scenario::Fanout(a) => scenarios::fanout::run(&ctx, a).await,
            Scenario::Persist(a) => scenarios::persist::run(&ctx, a).await,
            Scenario::Idle(a) => scenarios::idle::run(&ctx, a).await,
            Scenario::Connect(a) => scenarios::connect::run(&ctx, a).await,
            Scenario::Storm(a) => scenarios::storm::run(&ctx, a).await,
            Scenario::Soak(a) => scenarios::soak::run(&ctx, a).await,
            Scenario::Ramp(a) => scenarios::ramp::run(&ctx, a).await,
            Scenario::All => unreachable!("expanded above"),
        };
        let report = match report {
            Ok(report) => report,
            Err(e) => Report::failed(scenario_name(&scenario), &ctx, format!("{e:#}")),
        };
        report.print();
        reports.push(report);
    }
    if reports.len() > 1 {
        println!("\n== summary ==");
        for r in &reports {
            println!("  {:<8} {}", r.scenario, r.verdict());
        }
    }
    Ok(reports.iter().all(|r| r.problems.is_empty()))
}

fn scenario_name(s: &Scenario) -> &'static str {
    match s {
        Scenario::Fanout(_) => "fanout",
        Scenario::Persist(_) => "persist",
        Scenario::Idle(_) => "idle",
        Scenario::Connect(_) => "connect",
        Scenario::Storm(_) => "storm",
        Scenario::Soak(_) => "soak",
        Scenario::Ramp(_) => "ramp",
        Scenario::All => "all",
    }
}

/// Parses `args` (the first is the program name), runs, and returns the process exit code:
/// 0 all good, 1 something was lost or errored, 2 the bench could not run.
pub fn run_with_args<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("community-chat-bench: cannot start the runtime: {e}");
            return 2;
        }
    };
    let outcome = runtime.block_on(async {
        tokio::select! {
            result = run(cli) => result,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    // Socket tasks still running are dropped with the runtime.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match outcome {
        Ok(true) => 0,
        Ok(false) => {
            eprintln!("community-chat-bench: FAILED (something was lost or errored; see above)");
            1
        }
        Err(e) => {
            eprintln!("community-chat-bench: {e:#}");
            2
        }
    }
}
