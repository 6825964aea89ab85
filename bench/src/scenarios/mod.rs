//! The scenarios, and what they share: the run context, the set-up (servers, users, groups),
//! and the report each prints (figures, targets, verdict, the command that repeats it, and one
//! `result-json:` line for scripts).

pub mod connect;
pub mod fanout;
pub mod idle;
pub mod intervals;
pub mod persist;
pub mod ramp;
pub mod soak;
pub mod storm;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::{Map, Value, json};

pub use connect::ConnectArgs;
pub use fanout::FanoutArgs;
pub use idle::IdleArgs;
pub use persist::PersistArgs;
pub use ramp::RampArgs;
pub use soak::SoakArgs;
pub use storm::StormArgs;

use crate::{
    client::{ClientConfig, Clients, GatewayEndpoint, source_ips},
    plan::{Plan, Tokens, email},
    rest::Rest,
    topology::{Launch, Target, Topology},
};

/// The org every bench user belongs to on servers the bench started (each run has a database
/// of its own); an external target gets `<org prefix>-<random>` instead.
pub const ORG: &str = "bench-org";

/// How long the users' tokens stay valid unless a scenario needs longer.
const TOKEN_TTL: Duration = Duration::from_secs(6 * 3600);

/// What every scenario gets from the command line.
pub struct Ctx {
    pub launch: Launch,
    pub source_ips: u8,
    pub smoke: bool,
    pub fd_limit: u64,
    /// Posts carry a `clientMessageId` (`--no-client-message-id` turns it off).
    pub client_message_ids: bool,
}

impl Ctx {
    /// The exact command that repeats a scenario with these settings (an external target's
    /// secret is left to `BENCH_JWT_SECRET`, never printed).
    pub fn repeat(&self, scenario: &str, args: &[(&str, String)]) -> String {
        let args: Vec<String> = args.iter().map(|(k, v)| format!("--{k} {v}")).collect();
        let ids = if self.client_message_ids {
            ""
        } else {
            " --no-client-message-id"
        };
        if self.launch.target == Target::External {
            let external = &self.launch.external;
            let mut servers: Vec<String> = Vec::new();
            servers.extend(
                external
                    .api_urls
                    .iter()
                    .map(|u| format!("--api-url {}", shell_quote(u))),
            );
            servers.extend(
                external
                    .gateway_urls
                    .iter()
                    .map(|u| format!("--gateway-url {}", shell_quote(u))),
            );
            let (env, auth) = match &external.tokens {
                Some(Tokens::Command(c)) => (String::new(), format!(" --token-command {}", shell_quote(c))),
                _ => ("BENCH_JWT_SECRET=... ".to_owned(), String::new()),
            };
            return format!(
                "{env}cargo run --release -p community-chat-bench -- --target external {}{auth} --org-prefix {} --source-ips {}{ids} {scenario} {}",
                servers.join(" "),
                external.org_prefix,
                self.source_ips,
                args.join(" ")
            );
        }
        format!(
            "COMMUNITY_CHAT_BIN={} cargo run --release -p community-chat-bench -- --target {} --source-ips {} --server-log {}{ids} {scenario} {}",
            self.launch.bin.display(),
            self.launch.target.as_str(),
            self.source_ips,
            self.launch.server_log,
            args.join(" ")
        )
    }

    /// Most REST requests in flight that the open-file limit leaves room for beside `sockets`
    /// sockets (each request may hold a connection).
    pub fn inflight_budget(&self, sockets: usize) -> usize {
        (self.fd_limit as usize).saturating_sub(sockets + 300).clamp(50, 20_000)
    }

    pub fn client_config(&self, gateways: Vec<GatewayEndpoint>, reconnect: Option<(u64, u64)>) -> ClientConfig {
        ClientConfig {
            gateways,
            source_ips: source_ips(self.source_ips),
            handshake_timeout: std::time::Duration::from_secs(30),
            reconnect,
        }
    }

    /// Refuses a socket count the open-file limit cannot hold (bench side; each server process
    /// has the same limit for its side).
    pub fn check_sockets(&self, sockets: usize) -> anyhow::Result<()> {
        let needed = sockets as u64 + 256;
        if self.fd_limit > 0 && needed > self.fd_limit {
            anyhow::bail!(
                "{sockets} sockets need about {needed} open files, over this process's limit of {} \
                 (the hard limit: raising it needs CAP_SYS_RESOURCE); the gateway has the same limit",
                self.fd_limit
            );
        }
        Ok(())
    }
}

/// Server settings for load: a socket may send as fast as it likes (nothing else is changed).
pub fn load_env() -> Vec<(&'static str, String)> {
    vec![("SOCKET_SENDS_PER_SECOND", "100000".to_owned())]
}

/// What a scenario asks [`setup`] for.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// API processes to start (an external target has its own).
    pub apis: usize,
    /// Gateway processes to start (an external target has its own).
    pub gateways: usize,
    /// Users, one socket each at most.
    pub users: usize,
    /// Members per group (the last group of a layer may have fewer).
    pub group_size: usize,
    /// Groups each user is in.
    pub groups_per_user: usize,
    /// How long the users' tokens must stay valid.
    pub token_ttl: Duration,
}

impl Shape {
    /// `users` users, each in one group of `group_size`, over `apis` and `gateways` processes.
    pub fn new(apis: usize, gateways: usize, users: usize, group_size: usize) -> Self {
        Self {
            apis,
            gateways,
            users,
            group_size,
            groups_per_user: 1,
            token_ttl: TOKEN_TTL,
        }
    }

    pub fn groups_per_user(mut self, groups: usize) -> Self {
        self.groups_per_user = groups;
        self
    }

    /// Tokens valid for a run of `run` (and an hour more), six hours at least.
    pub fn lasting(mut self, run: Duration) -> Self {
        self.token_ttl = TOKEN_TTL.max(run + Duration::from_secs(3600));
        self
    }
}

/// Servers, a REST client, and users in groups created over REST.
pub struct Setup {
    pub topology: Topology,
    pub rest: Arc<Rest>,
    pub apis: Arc<Vec<String>>,
    pub plan: Arc<Plan>,
    pub seconds: f64,
}

pub async fn setup(ctx: &Ctx, shape: Shape) -> anyhow::Result<Setup> {
    let started = Instant::now();
    let (topology, org) = match ctx.launch.target {
        Target::External => {
            let topology = Topology::external(&ctx.launch).await?;
            let org = format!(
                "{}-{}",
                ctx.launch.external.org_prefix,
                &crate::rest::random_uuid()[..8]
            );
            (topology, org)
        }
        _ => {
            let topology = Topology::start(&ctx.launch, shape.apis, shape.gateways, &load_env()).await?;
            (topology, ORG.to_owned())
        }
    };
    let rest = Arc::new(Rest::new(&org, ctx.client_message_ids)?);
    let api_urls = Arc::new(topology.api_urls());
    let emails: Vec<String> = (0..shape.users).map(email).collect();
    let tokens = topology.tokens.issue(&org, &emails, shape.token_ttl).await?;
    let mut plan = Plan::new(&org, tokens, shape.group_size, shape.groups_per_user)?;
    plan.create_groups(&rest, &api_urls, 64).await?;
    Ok(Setup {
        topology,
        rest,
        apis: api_urls,
        plan: Arc::new(plan),
        seconds: started.elapsed().as_secs_f64(),
    })
}

impl Setup {
    /// How long the set-up took, and what it did.
    pub fn took(&self) -> String {
        let what = if self.topology.launch.target == Target::External {
            "tokens, groups over REST"
        } else {
            "servers, users, groups over REST"
        };
        format!("{:.1} s ({what})", self.seconds)
    }
}

/// `text` as one shell word.
pub fn shell_quote(text: &str) -> String {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c))
    {
        return text.to_owned();
    }
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// Sockets of a run, stopped when dropped.
pub struct SocketsGuard(pub Arc<Clients>);

impl Drop for SocketsGuard {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

/// A scenario's outcome.
pub struct Report {
    pub scenario: &'static str,
    pub target: Target,
    pub lines: Vec<(String, String)>,
    pub json: Map<String, Value>,
    /// Losses, errors, crashes: any makes the run fail.
    pub problems: Vec<String>,
    /// `(met, text)` for each target of the issue that this run can judge.
    pub targets: Vec<(bool, String)>,
    pub notes: Vec<String>,
    pub repeat: String,
}

impl Report {
    pub fn new(scenario: &'static str, ctx: &Ctx, repeat: String) -> Self {
        let mut json = Map::new();
        json.insert("scenario".into(), json!(scenario));
        json.insert("target".into(), json!(ctx.launch.target.as_str()));
        json.insert("smoke".into(), json!(ctx.smoke));
        json.insert("client_message_ids".into(), json!(ctx.client_message_ids));
        let load = load_average();
        json.insert("loadavg_at_start".into(), json!(load));
        Self {
            scenario,
            target: ctx.launch.target,
            lines: vec![(
                "machine load at start".to_owned(),
                format!(
                    "{load} (1/5/15 min load average, {} cores: other work on the machine skews the figures)",
                    std::thread::available_parallelism().map_or(0, |n| n.get())
                ),
            )],
            json,
            problems: Vec::new(),
            targets: Vec::new(),
            notes: Vec::new(),
            repeat,
        }
    }

    /// A scenario that could not run.
    pub fn failed(scenario: &'static str, ctx: &Ctx, error: String) -> Self {
        let mut report = Self::new(scenario, ctx, String::new());
        report.problems.push(format!("could not run: {error}"));
        report
    }

    pub fn line(&mut self, label: &str, text: impl Into<String>) {
        self.lines.push((label.to_owned(), text.into()));
    }

    pub fn set(&mut self, key: &str, value: Value) {
        self.json.insert(key.to_owned(), value);
    }

    /// The `connected` line of a scenario, and a problem when sockets failed to connect.
    pub fn connected(&mut self, connected: &crate::client::ConnectReport, wanted: usize, clients: &Clients) {
        self.line(
            "connected",
            format!(
                "{} of {} in {:.2} s ({:.0}/s)",
                connected.ok,
                wanted,
                connected.seconds,
                connected.ok as f64 / connected.seconds.max(1e-9)
            ),
        );
        if connected.failed > 0 {
            self.problem(format!(
                "{} sockets failed to connect: {}",
                connected.failed,
                clients.error_summary()
            ));
        }
    }

    pub fn problem(&mut self, text: impl Into<String>) {
        self.problems.push(text.into());
    }

    pub fn target(&mut self, met: bool, text: impl Into<String>) {
        self.targets.push((met, text.into()));
    }

    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    /// Problems when any of these counters is non-zero.
    pub fn require_zero(&mut self, counters: &[(&str, u64)]) {
        for (name, value) in counters {
            if *value > 0 {
                self.problem(format!("{name}: {value}"));
            }
        }
    }

    pub fn verdict(&self) -> String {
        if self.problems.is_empty() {
            let unmet = self.targets.iter().filter(|(met, _)| !met).count();
            if unmet == 0 {
                "OK".to_owned()
            } else {
                format!("OK (nothing lost or errored; {unmet} target(s) not met)")
            }
        } else {
            format!("FAILED: {}", self.problems.join("; "))
        }
    }

    pub fn print(&self) {
        println!("\n== {} ({}) ==", self.scenario, self.target.as_str());
        for (label, text) in &self.lines {
            println!("  {label:<30} {text}");
        }
        for (met, text) in &self.targets {
            println!("  target {:<23} {text}", if *met { "[met]" } else { "[NOT met]" });
        }
        for note in &self.notes {
            println!("  note: {note}");
        }
        println!("  result: {}", self.verdict());
        if !self.repeat.is_empty() {
            println!("  repeat: {}", self.repeat);
        }
        let mut json = self.json.clone();
        json.insert("ok".into(), json!(self.problems.is_empty()));
        json.insert("problems".into(), json!(self.problems));
        json.insert(
            "targets".into(),
            json!(
                self.targets
                    .iter()
                    .map(|(met, t)| json!({ "met": met, "target": t }))
                    .collect::<Vec<_>>()
            ),
        );
        json.insert("repeat".into(), json!(self.repeat));
        println!("  result-json: {}", Value::Object(json));
    }

    /// The gateways' own counters that tell why something went missing (from `/metrics`).
    pub fn gateway_counters(&mut self, counters: &[(String, f64)]) {
        const SHOWN: &[&str] = &[
            "gateway_events_in_total",
            "gateway_events_out_total",
            "gateway_events_lagged_total",
            "gateway_duplicates_dropped_total",
            "gateway_gap_fills_total",
            "gateway_gaps_skipped_total",
            "gateway_slow_clients_disconnected_total",
        ];
        let shown: Vec<&(String, f64)> = counters.iter().filter(|(n, _)| SHOWN.contains(&n.as_str())).collect();
        if shown.is_empty() {
            return;
        }
        let text = shown
            .iter()
            .map(|(n, v)| format!("{} {v}", n.trim_start_matches("gateway_").trim_end_matches("_total")))
            .collect::<Vec<_>>()
            .join(", ");
        self.line("gateway counters", text);
        self.set(
            "gateway_counters",
            Value::Object(shown.iter().map(|(n, v)| (n.clone(), json!(v))).collect()),
        );
    }

    /// CPU seconds per tier, each also per `per` units of work (`unit` names them).
    pub fn cpu(&mut self, used: &[(String, f64)], wall: f64, per: Option<(f64, &str)>) {
        let mut parts = Vec::new();
        let mut json = Map::new();
        for (label, seconds) in used {
            let share = if wall > 0.0 { seconds / wall * 100.0 } else { 0.0 };
            let mut text = format!("{label} {seconds:.2} s ({share:.0}% of a core)");
            let mut entry = json!({ "cpu_s": seconds, "core_pct": share });
            if let Some((units, unit)) = per
                && units > 0.0
            {
                let each = seconds / units;
                text.push_str(&format!(", {each:.4} s/{unit}"));
                entry["per_unit_s"] = json!(each);
            }
            parts.push(text);
            json.insert(label.clone(), entry);
        }
        self.line(&format!("CPU over {wall:.1} s"), parts.join("; "));
        self.set("cpu", Value::Object(json));
    }
}

/// `/proc/loadavg`'s 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Seconds (float) between two bench-clock microsecond stamps.
pub fn seconds_between(from_us: u64, to_us: u64) -> f64 {
    to_us.saturating_sub(from_us) as f64 / 1e6
}

/// The value at quantile `q` of `values` (sorted in place), or `None` if empty.
pub fn quantile(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    Some(values[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&mut v, 0.99), Some(99.0));
        assert_eq!(quantile(&mut v, 1.0), Some(100.0));
        assert_eq!(quantile(&mut [], 0.5), None);
    }

    #[test]
    fn shell_words() {
        assert_eq!(shell_quote("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }

    #[test]
    fn tokens_outlive_the_run() {
        let shape = Shape::new(2, 2, 10, 10);
        assert_eq!(shape.token_ttl, TOKEN_TTL);
        assert_eq!(shape.lasting(Duration::from_secs(600)).token_ttl, TOKEN_TTL);
        let long = shape.lasting(Duration::from_secs(24 * 3600)).token_ttl;
        assert_eq!(long, Duration::from_secs(25 * 3600));
    }
}
