//! The servers a scenario runs against. Started by the bench itself and always stopped by it:
//! scaled (a fresh Postgres database `cc_bench_<random>`, `migrate`, N `api` and M `gateway`
//! processes sharing one Redis under a channel prefix of their own) or standalone (one `serve`
//! process with SQLite and the in-process bus). Dropping a [`Topology`] kills its processes
//! (SIGKILL) and drops its database, on success and on error alike. Or external: servers the
//! bench did not start (an operator's install, another implementation of the same API), reached
//! by URL, whose CPU the bench cannot see (`external.rs`). `cpu.rs` says which processes' CPU a
//! scenario reports.

use std::{
    fs::File,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

mod cpu;
mod external;

pub use cpu::CpuProbe;
pub use external::{External, gateway_endpoint};

use crate::{client::GatewayEndpoint, plan::Tokens};

/// Environment variables the server reads (shared/src/config.rs): never inherited from the
/// bench's own environment, so a developer's settings cannot change what is measured.
const CONFIG_VARS: &[&str] = &[
    "DATABASE_URL",
    "DATABASE_MAX_CONNECTIONS",
    "DATABASE_POST_BATCH",
    "REDIS_URL",
    "REDIS_SHARDED_PUBSUB",
    "REDIS_CHANNEL_PREFIX",
    "LISTEN_ADDR",
    "DATA_DIR",
    "JWT_SECRET",
    "JWT_PUBLIC_KEY_FILE",
    "JWT_ALGORITHM",
    "JWT_ISSUER",
    "JWT_AUDIENCE",
    "JWT_EMAIL_CLAIM",
    "JWT_ORG_CLAIM",
    "CORS_ORIGINS",
    "RUST_LOG",
    "LOG_FORMAT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "SHUTDOWN_DRAIN_SECONDS",
    "SOCKET_MAX_QUEUED_PACKETS",
    "SOCKET_SENDS_PER_SECOND",
    "SOCKET_MAX_PAYLOAD_BYTES",
    "SOCKET_READ_BUFFER_BYTES",
    "TYPING_THROTTLE_MS",
    "SOCKET_PING_INTERVAL_MS",
    "SOCKET_PING_TIMEOUT_MS",
    "GAP_FILL_DELAY_MS",
    "MAX_CONTENT_CHARS",
    "MAX_ATTACHMENTS",
    "MAX_NAME_CHARS",
    "MAX_DESCRIPTION_CHARS",
    "MAX_BODY_BYTES",
    "MAX_INITIAL_MEMBERS",
    "CONTENT_TYPES",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// Postgres + Redis, 2 `api` and 2 `gateway` processes.
    Scaled,
    /// One `serve` process (SQLite, in-process bus): it is the API and the gateway.
    Standalone,
    /// Servers the bench did not start, given by URL (--api-url, --gateway-url).
    External,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Scaled => "scaled",
            Target::Standalone => "standalone",
            Target::External => "external",
        }
    }
}

/// How to start the servers, or where the external ones are.
#[derive(Clone, Debug)]
pub struct Launch {
    pub target: Target,
    pub bin: PathBuf,
    /// Postgres URL the bench creates and drops its database with.
    pub admin_url: String,
    pub redis_url: String,
    /// `RUST_LOG` of the servers.
    pub server_log: String,
    pub keep_logs: bool,
    /// The servers of `--target external`.
    pub external: External,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Api,
    Gateway,
    /// `serve`: both.
    Both,
}

pub struct Server {
    pub name: String,
    pub role: Role,
    pub pid: u32,
    pub addr: SocketAddr,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Server {
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

pub struct Topology {
    pub launch: Launch,
    /// The processes the bench started (none for an external target).
    pub servers: Vec<Server>,
    /// Where the users' tokens come from: the secret the started servers verify with, or the
    /// external target's secret or command.
    pub tokens: Tokens,
    /// External target: the gateways' endpoints, resolved once.
    pub external_gateways: Vec<GatewayEndpoint>,
    pub redis_prefix: String,
    /// The scratch database (scaled only): name and URL.
    pub database: Option<(String, String)>,
    /// Logs and standalone data.
    pub dir: PathBuf,
    /// Keep `dir` after the run (on request, or because something failed).
    pub keep_dir: bool,
}

fn random_hex(bytes: usize) -> String {
    (0..bytes).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
}

/// `postgres://user@host:port/db?x` with the database name replaced.
pub fn with_database(url: &str, db: &str) -> anyhow::Result<String> {
    let mut parsed = reqwest::Url::parse(url).with_context(|| format!("database admin URL {url}"))?;
    parsed.set_path(&format!("/{db}"));
    Ok(parsed.to_string())
}

/// Runs `psql` against `url` with one statement.
pub fn psql(url: &str, sql: &str) -> anyhow::Result<String> {
    let out = Command::new("psql")
        .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
        .stdin(Stdio::null())
        .output()
        .context("running psql (install postgresql-client)")?;
    if !out.status.success() {
        bail!("psql `{sql}` failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Topology {
    /// Starts `apis` API and `gateways` gateway processes (scaled) or one `serve` (standalone),
    /// and waits until each listens and answers `/readyz`. `env` adds server settings.
    pub async fn start(launch: &Launch, apis: usize, gateways: usize, env: &[(&str, String)]) -> anyhow::Result<Self> {
        if !launch.bin.is_file() {
            bail!(
                "server binary {} not found: build it (cargo build --release -p community-chat) or set COMMUNITY_CHAT_BIN / --bin",
                launch.bin.display()
            );
        }
        let id = random_hex(6);
        let dir = std::env::temp_dir().join(format!("cc-bench-{id}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut topology = Topology {
            launch: launch.clone(),
            servers: Vec::new(),
            tokens: Tokens::Secret(format!("bench-secret-{}", random_hex(16))),
            external_gateways: Vec::new(),
            redis_prefix: format!("cc-bench-{id}"),
            database: None,
            dir,
            keep_dir: launch.keep_logs,
        };
        let started = topology.start_servers(apis, gateways, env, &id).await;
        if started.is_err() {
            topology.keep_dir = true;
        }
        started.map(|()| topology)
    }

    /// The servers of `--target external`: nothing is started; gateway names are resolved.
    pub async fn external(launch: &Launch) -> anyhow::Result<Self> {
        let external = &launch.external;
        external.check()?;
        let mut gateways = Vec::new();
        for url in &external.gateway_urls {
            gateways.push(gateway_endpoint(url).await?);
        }
        Ok(Topology {
            launch: launch.clone(),
            servers: Vec::new(),
            tokens: external.tokens.clone().context("no token source")?,
            external_gateways: gateways,
            redis_prefix: String::new(),
            database: None,
            dir: PathBuf::new(),
            keep_dir: false,
        })
    }

    async fn start_servers(
        &mut self,
        apis: usize,
        gateways: usize,
        env: &[(&str, String)],
        id: &str,
    ) -> anyhow::Result<()> {
        let Tokens::Secret(secret) = &self.tokens else {
            bail!("servers the bench starts verify tokens with a secret of the bench's own");
        };
        let mut common: Vec<(&str, String)> = vec![
            ("JWT_SECRET", secret.clone()),
            ("LISTEN_ADDR", "127.0.0.1:0".into()),
            ("RUST_LOG", self.launch.server_log.clone()),
            ("SHUTDOWN_DRAIN_SECONDS", "1".into()),
        ];
        common.extend(env.iter().cloned());
        let mut plan: Vec<(String, Role, &str)> = Vec::new();
        match self.launch.target {
            Target::Scaled => {
                let name = format!("cc_bench_{id}");
                psql(&self.launch.admin_url, &format!("CREATE DATABASE {name}"))?;
                let url = with_database(&self.launch.admin_url, &name)?;
                self.database = Some((name, url.clone()));
                common.push(("DATABASE_URL", url));
                common.push(("REDIS_URL", self.launch.redis_url.clone()));
                common.push(("REDIS_CHANNEL_PREFIX", self.redis_prefix.clone()));
                self.migrate(&common)?;
                plan.extend((0..apis).map(|i| (format!("api-{i}"), Role::Api, "api")));
                plan.extend((0..gateways).map(|i| (format!("gateway-{i}"), Role::Gateway, "gateway")));
            }
            Target::Standalone => {
                common.push(("DATA_DIR", self.dir.join("data").display().to_string()));
                plan.push(("serve".into(), Role::Both, "serve"));
            }
            Target::External => bail!("an external target's servers are not started by the bench"),
        }
        for (name, role, subcommand) in plan {
            let server = self.spawn(&name, role, subcommand, &common)?;
            self.servers.push(server);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        for i in 0..self.servers.len() {
            let addr = wait_listening(&mut self.servers[i], deadline).await?;
            self.servers[i].addr = addr;
        }
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
        for server in &self.servers {
            wait_ready(&http, server, deadline).await?;
        }
        Ok(())
    }

    fn command(&self, subcommand: &str, env: &[(&str, String)]) -> Command {
        let mut cmd = Command::new(&self.launch.bin);
        cmd.arg(subcommand).stdin(Stdio::null());
        for var in CONFIG_VARS {
            cmd.env_remove(var);
        }
        cmd.env("LOG_FORMAT", "text");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    fn migrate(&self, env: &[(&str, String)]) -> anyhow::Result<()> {
        let log = self.dir.join("migrate.log");
        let file = File::create(&log)?;
        let status = self
            .command("migrate", env)
            .stdout(file.try_clone()?)
            .stderr(file)
            .status()
            .context("running migrate")?;
        if !status.success() {
            bail!("migrate failed ({status}): {}", tail(&log));
        }
        Ok(())
    }

    fn spawn(&self, name: &str, role: Role, subcommand: &str, env: &[(&str, String)]) -> anyhow::Result<Server> {
        let log = self.dir.join(format!("{name}.log"));
        let file = File::create(&log)?;
        let child = self
            .command(subcommand, env)
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {} {subcommand}", self.launch.bin.display()))?;
        Ok(Server {
            name: name.to_owned(),
            role,
            pid: child.id(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            child: Some(child),
        })
    }

    pub fn apis(&self) -> Vec<&Server> {
        self.servers.iter().filter(|s| s.role != Role::Gateway).collect()
    }

    pub fn gateways(&self) -> Vec<&Server> {
        self.servers.iter().filter(|s| s.role != Role::Api).collect()
    }

    /// Base URL of each API process (`http://ADDR`), or the external target's API URLs.
    pub fn api_urls(&self) -> Vec<String> {
        if self.launch.target == Target::External {
            return self
                .launch
                .external
                .api_urls
                .iter()
                .map(|u| u.trim_end_matches('/').to_owned())
                .collect();
        }
        self.apis().iter().map(|s| format!("http://{}", s.addr)).collect()
    }

    /// Where sockets connect: each gateway, or the external target's gateway endpoints.
    pub fn gateway_endpoints(&self) -> Vec<GatewayEndpoint> {
        if self.launch.target == Target::External {
            return self.external_gateways.clone();
        }
        self.gateways()
            .iter()
            .map(|s| GatewayEndpoint::direct(s.addr))
            .collect()
    }

    /// What [`CpuProbe::snapshot`] needs to take the CPU of this topology's processes.
    pub fn cpu_probe(&self) -> CpuProbe {
        CpuProbe {
            target: self.launch.target,
            gateway_pids: self.gateways().iter().map(|s| s.pid).collect(),
            api_pids: self.apis().iter().map(|s| s.pid).collect(),
            database: self.database.as_ref().map(|(name, _)| name.clone()),
        }
    }

    /// The gateways' `gateway_*` counters from `/metrics`, summed over the live gateways (none
    /// for an external target: behind a load balancer they would be one pod's).
    pub async fn gateway_counters(&self) -> Vec<(String, f64)> {
        crate::stats::sum_counters(self.gateways().iter().map(|s| s.addr.to_string()), "gateway_").await
    }

    /// The API processes' group commit counters (`db_post_*`), summed.
    pub async fn post_batch_counters(&self) -> Vec<(String, f64)> {
        crate::stats::sum_counters(self.apis().iter().map(|s| s.addr.to_string()), "db_post_").await
    }

    /// `kill -9` one server (the storm).
    pub fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        let server = self
            .servers
            .iter_mut()
            .find(|s| s.name == name)
            .with_context(|| format!("no server {name}"))?;
        if let Some(child) = server.child.as_mut() {
            child.kill().with_context(|| format!("killing {name}"))?;
            child.wait()?;
        }
        Ok(())
    }

    /// Names the servers that died on their own (a crash is a finding).
    pub fn crashed(&mut self, except: &[&str]) -> Vec<String> {
        self.servers
            .iter_mut()
            .filter(|s| !except.contains(&s.name.as_str()))
            .filter_map(|s| (!s.alive()).then(|| format!("{} exited: {}", s.name, tail(&s.log))))
            .collect()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for server in &mut self.servers {
            if let Some(mut child) = server.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Some((name, _)) = &self.database
            && let Err(e) = psql(
                &self.launch.admin_url,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            )
        {
            eprintln!("warning: could not drop the bench database {name}: {e}");
        }
        if self.launch.target == Target::External {
            return;
        }
        if self.keep_dir {
            eprintln!("server logs kept in {}", self.dir.display());
        } else if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("warning: could not remove {}: {e}", self.dir.display());
        }
    }
}

/// The last lines of a log, for error messages.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(15);
    format!(
        "{} (log {}):\n{}",
        "last lines",
        path.display(),
        lines[start..].join("\n")
    )
}

/// Waits for `listening on http://ADDR` in the server's log.
async fn wait_listening(server: &mut Server, deadline: Instant) -> anyhow::Result<SocketAddr> {
    loop {
        let text = std::fs::read_to_string(&server.log).unwrap_or_default();
        if let Some(rest) = text.split("listening on http://").nth(1) {
            let addr = rest.split_whitespace().next().unwrap_or_default();
            return addr
                .parse()
                .with_context(|| format!("{}: cannot parse listen address '{addr}'", server.name));
        }
        if !server.alive() {
            bail!("{} exited before listening; {}", server.name, tail(&server.log));
        }
        if Instant::now() > deadline {
            bail!("{} did not listen within 60 s; {}", server.name, tail(&server.log));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_ready(http: &reqwest::Client, server: &Server, deadline: Instant) -> anyhow::Result<()> {
    let url = format!("http://{}/readyz", server.addr);
    loop {
        if let Ok(r) = http.get(&url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{} not ready within 60 s; {}", server.name, tail(&server.log));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs pgbench with a one-row-insert script against the bench database: the machine's
/// ceiling for durable single-row commits at `clients` connections. `None` when pgbench is
/// not installed.
pub fn pgbench_insert_ceiling(
    db_url: &str,
    dir: &Path,
    clients: usize,
    seconds: u64,
) -> anyhow::Result<Option<(f64, String)>> {
    if Command::new("pgbench").arg("--version").output().is_err() {
        return Ok(None);
    }
    psql(
        db_url,
        "CREATE TABLE IF NOT EXISTS bench_insert (id bigserial PRIMARY KEY, org_id text NOT NULL, \
         group_id uuid NOT NULL, seq bigint NOT NULL, sender text NOT NULL, content text NOT NULL, \
         created_at timestamptz NOT NULL DEFAULT now())",
    )?;
    let script = dir.join("insert.sql");
    std::fs::write(
        &script,
        "INSERT INTO bench_insert (org_id, group_id, seq, sender, content) \
         VALUES ('bench', gen_random_uuid(), 1, 'u0@bench.test', 'b:0:0');\n",
    )?;
    let threads = clients.clamp(1, 2);
    let args = [
        "-n".to_owned(),
        "-c".to_owned(),
        clients.to_string(),
        "-j".to_owned(),
        threads.to_string(),
        "-T".to_owned(),
        seconds.to_string(),
        "-f".to_owned(),
        script.display().to_string(),
        db_url.to_owned(),
    ];
    let command = format!("pgbench {}", args.join(" "));
    let out = Command::new("pgbench")
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .context("running pgbench")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{command} failed: {}{}",
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let tps = stdout
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l["tps = ".len()..].split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .with_context(|| format!("no tps in pgbench output: {stdout}"))?;
    Ok(Some((tps, command)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_in_url() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "cc_bench_1").unwrap(),
            "postgres://postgres@127.0.0.1:5432/cc_bench_1"
        );
        assert_eq!(
            with_database("postgres://u:p@h/x?sslmode=disable", "y").unwrap(),
            "postgres://u:p@h/y?sslmode=disable"
        );
    }
}
