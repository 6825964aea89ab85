//! `deploy/local-topology.sh`: the scaled topology on this machine (local Postgres and Redis,
//! 2 api + 2 gateway processes, nginx in front with deploy/nginx.conf) starts, routes REST to the
//! api tier and socket.io to the gateway tier with long-polling affinity, carries an event from
//! an api process to a socket on a gateway through Redis, and stops everything it started.
//!
//! Each test starts its own topology in its own state folder (own database, Redis prefix and
//! ports); a guard stops it even when an assertion fails.
//!
//! The tests need nginx (the script installs Debian's package when it is missing, which takes
//! root) and the e2e one Node.js 20+ too, so a plain `cargo test` leaves them out as ignored; the
//! test command runs them with `--include-ignored`.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_community-chat");

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A running topology; dropping it runs `stop`.
struct Topology {
    dir: PathBuf,
    env: HashMap<String, String>,
    stopped: bool,
}

impl Topology {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("cc-topology-test-{}-{}", std::process::id(), unique()));
        // The guard exists before `start` runs: whatever it managed to start gets stopped.
        let mut topology = Self {
            dir,
            env: HashMap::new(),
            stopped: false,
        };
        let out = topology.script("start");
        assert!(out.status.success(), "start failed:\n{}", describe(&out));
        let env_file = std::fs::read_to_string(topology.dir.join("topology.env")).expect("topology.env");
        topology.env = env_file
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        topology
    }

    fn script(&self, command: &str) -> Output {
        Command::new("bash")
            .arg(repo().join("deploy/local-topology.sh"))
            .arg(command)
            .env("CC_TOPOLOGY_DIR", &self.dir)
            .env("COMMUNITY_CHAT_BIN", BIN)
            .output()
            .expect("run deploy/local-topology.sh")
    }

    fn var(&self, name: &str) -> &str {
        self.env
            .get(name)
            .unwrap_or_else(|| panic!("{name} is missing from topology.env"))
    }

    fn urls(&self, name: &str) -> Vec<String> {
        self.var(name).split(',').map(str::to_owned).collect()
    }

    /// The pids of every process the script started (read before `stop` removes them).
    fn pids(&self) -> Vec<(String, u32)> {
        ["api-1", "api-2", "gateway-1", "gateway-2", "nginx"]
            .iter()
            .map(|name| {
                let text = std::fs::read_to_string(self.dir.join(format!("{name}.pid"))).expect("pid file");
                (name.to_string(), text.trim().parse().expect("pid"))
            })
            .collect()
    }

    fn stop(&mut self) -> Output {
        self.stopped = true;
        self.script("stop")
    }

    fn token(&self, org: &str, email: &str) -> String {
        let out = Command::new(BIN)
            .args(["token", "--org", org, "--email", email])
            .env("JWT_SECRET", self.var("JWT_SECRET"))
            .output()
            .expect("community-chat token");
        assert!(out.status.success(), "token: {}", describe(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if !self.stopped {
            let out = self.stop();
            if !out.status.success() {
                eprintln!("stop after a failure did not succeed:\n{}", describe(&out));
            }
        }
        if std::thread::panicking() {
            for log in ["api-1", "api-2", "gateway-1", "gateway-2", "nginx", "migrate"] {
                if let Ok(text) = std::fs::read_to_string(self.dir.join(format!("{log}.log"))) {
                    eprintln!("--- {log}.log ---\n{}", tail(&text, 30));
                }
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("cannot remove {}: {e}", self.dir.display());
        }
    }
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        tail(&String::from_utf8_lossy(&out.stderr), 40)
    )
}

/// Whether the process still runs (a zombie waiting for its parent to reap it does not).
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(40))
        .build()
        .expect("http client")
}

/// One Engine.IO v4 long-polling session through nginx: every request must reach the gateway
/// that opened it, which is what the upstream's affinity guarantees.
struct Polling {
    http: reqwest::Client,
    url: String,
}

impl Polling {
    async fn open(http: &reqwest::Client, base: &str) -> Self {
        let url = format!("{base}/socket.io/?EIO=4&transport=polling");
        let body = http
            .get(&url)
            .send()
            .await
            .expect("handshake")
            .text()
            .await
            .expect("body");
        let open: Value = serde_json::from_str(body.strip_prefix('0').expect("an open packet")).expect("open JSON");
        let sid = open["sid"].as_str().expect("sid");
        Self {
            http: http.clone(),
            url: format!("{url}&sid={sid}"),
        }
    }

    async fn send(&self, packet: &str) {
        let response = self
            .http
            .post(&self.url)
            .body(packet.to_owned())
            .send()
            .await
            .expect("post");
        assert!(
            response.status().is_success(),
            "polling POST answered {}",
            response.status()
        );
    }

    /// Polls until a packet starts with `prefix` (pings are answered); the packet.
    async fn receive(&self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let response = self.http.get(&self.url).send().await.expect("poll");
            assert!(
                response.status().is_success(),
                "polling GET answered {}",
                response.status()
            );
            let payload = response.text().await.expect("payload");
            for packet in payload.split('\u{1e}') {
                if packet == "2" {
                    self.send("3").await;
                } else if packet.starts_with(prefix) {
                    return packet.to_owned();
                }
            }
        }
        panic!("no packet starting with {prefix} within 20 s");
    }
}

#[tokio::test]
#[ignore = "needs nginx; the test command runs it"]
async fn local_topology_routes_both_tiers_through_nginx_and_stops_cleanly() {
    let mut topology = Topology::start();
    let front = topology.var("CC_TOPOLOGY_URL").to_owned();
    let http = http();

    // REST reaches the api tier: no token is a 401 in the service's error shape.
    let response = http
        .get(format!("{front}/client/community/groups"))
        .send()
        .await
        .expect("GET groups");
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.expect("JSON error");
    assert_eq!(body["statusCode"], 401);

    // Every process is ready: Postgres and Redis answer it.
    let processes: Vec<String> = topology
        .urls("CC_API_URLS")
        .into_iter()
        .chain(topology.urls("CC_GATEWAY_URLS"))
        .collect();
    assert_eq!(processes.len(), 4);
    for base in &processes {
        let status = http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .expect("readyz")
            .status();
        assert_eq!(status, 200, "{base}/readyz");
    }

    // socket.io reaches the gateway tier; a bad token is refused by the namespace handshake.
    let refused = Polling::open(&http, &front).await;
    refused
        .send(r#"40/community-chat,{"token":"not-a-jwt","orgId":"acme"}"#)
        .await;
    let error = refused.receive("44/community-chat,").await;
    assert!(error.contains("message"), "connect_error with a message: {error}");

    // A group created over REST, a socket of its member connected through nginx, a message
    // posted over REST: the api process publishes to Redis and the gateway delivers it.
    let token = topology.token("acme", "ann@acme.test");
    let created = http
        .post(format!("{front}/client/community/groups"))
        .header("orgid", "acme")
        .bearer_auth(&token)
        .json(&json!({ "name": "topology", "type": "private" }))
        .send()
        .await
        .expect("create group");
    assert_eq!(created.status(), 201);
    let group: Value = created.json().await.expect("group");
    let group_id = group["id"].as_str().expect("group id");

    let socket = Polling::open(&http, &front).await;
    socket
        .send(&format!(r#"40/community-chat,{{"token":"{token}","orgId":"acme"}}"#))
        .await;
    let connected = socket.receive("40/community-chat,").await;
    assert!(connected.contains("sid"), "namespace connect: {connected}");

    let posted = http
        .post(format!("{front}/client/community/groups/{group_id}/messages"))
        .header("orgid", "acme")
        .bearer_auth(&token)
        .json(&json!({ "content": "hello through nginx" }))
        .send()
        .await
        .expect("post message");
    assert_eq!(posted.status(), 201);
    let event = socket.receive(r#"42/community-chat,["newGroupMessage""#).await;
    assert!(
        event.contains("hello through nginx"),
        "the message reached the socket: {event}"
    );

    // stop: every process it started is gone, its ports are closed, its database dropped.
    let pids = topology.pids();
    let database = topology
        .var("DATABASE_URL")
        .rsplit('/')
        .next()
        .expect("database name")
        .to_owned();
    let out = topology.stop();
    assert!(out.status.success(), "stop failed:\n{}", describe(&out));
    for (name, pid) in &pids {
        assert!(!running(*pid), "{name} (pid {pid}) still runs after stop");
    }
    for base in processes.iter().chain([&front]) {
        assert!(
            http.get(format!("{base}/healthz")).send().await.is_err(),
            "{base} still answers after stop"
        );
    }
    let listed = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-Atc"])
        .arg(format!("SELECT count(*) FROM pg_database WHERE datname = '{database}'"))
        .output()
        .expect("psql");
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout).trim(),
        "0",
        "{database} is dropped"
    );
    assert!(!topology.dir.join("topology.env").exists(), "the env file is removed");
}

/// The Node e2e suite (tests/e2e, official socket.io client) against this topology through
/// nginx, as an external topology (tests/socket_e2e.rs runs it against processes it starts).
#[test]
#[ignore = "needs nginx, Node.js 20+ and `npm ci` in tests/e2e; the test command runs it"]
fn e2e_suite_passes_through_nginx() {
    let suite = repo().join("tests/e2e/gateway.test.mjs");
    assert!(suite.exists(), "{} is missing", suite.display());
    assert!(
        repo().join("tests/e2e/node_modules/socket.io-client").is_dir(),
        "the e2e suite's npm packages are missing: run `npm ci` in tests/e2e"
    );
    let topology = Topology::start();
    let front = topology.var("CC_TOPOLOGY_URL");
    let out = Command::new("node")
        .arg("--test")
        .arg(&suite)
        .current_dir(repo().join("tests/e2e"))
        .env("E2E_API_URLS", front)
        .env("E2E_GATEWAY_URLS", front)
        .env("E2E_JWT_SECRET", topology.var("JWT_SECRET"))
        .output()
        .expect("run node --test");
    assert!(out.status.success(), "e2e suite through nginx:\n{}", describe(&out));
}
