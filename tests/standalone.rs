//! The real `community-chat` binary as a process, as a new user runs it: `serve` with nothing
//! configured (SQLite file and a generated JWT secret under `./data`), `token` to mint a token,
//! the quickstart over HTTP, a restart that keeps data and secret, SIGTERM, bad settings and
//! `--help`.

use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_community-chat");
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A fresh folder, removed afterwards.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("community-chat-standalone-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ignored = std::fs::remove_dir_all(&self.0);
    }
}

/// The binary with a clean environment (no DATABASE_URL, JWT_SECRET, ... from the caller), run
/// from `cwd`.
fn command(cwd: &Path) -> Command {
    let mut command = Command::new(BIN);
    command.current_dir(cwd).env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    command
}

/// A running child process, killed (and reaped) when dropped, whatever the test did.
struct Process {
    child: Child,
    stdout: mpsc::Receiver<String>,
    /// Everything read from stdout so far.
    printed: Vec<String>,
    /// Everything the process wrote to stderr (drained continuously so it never blocks).
    stderr: Arc<Mutex<String>>,
}

impl Process {
    fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn community-chat");
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut err = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        Self {
            child,
            stdout: rx,
            printed: Vec::new(),
            stderr,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Reads stdout until `listening on http://ADDR`; returns `http://ADDR`.
    fn wait_listening(&mut self) -> String {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => {
                    let found = line.strip_prefix("listening on ").map(|a| a.trim().to_owned());
                    self.printed.push(line);
                    if let Some(address) = found {
                        assert!(address.starts_with("http://127.0.0.1:"), "{address}");
                        return address;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    panic!(
                        "exited ({status:?}) before listening; stdout: {:?}; stderr: {}",
                        self.printed,
                        self.stderr()
                    );
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the reader thread hand over what it still has, for the message.
                std::thread::sleep(Duration::from_millis(100));
                self.printed.extend(self.stdout.try_iter());
                panic!(
                    "exited ({status}) before listening; stdout: {:?}; stderr: {}",
                    self.printed,
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "not listening after {START_TIMEOUT:?}; stdout: {:?}; stderr: {}",
                self.printed,
                self.stderr()
            );
        }
    }

    /// Waits for the process to exit by itself; `None` when it is still running at the deadline.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and expects a clean exit (0) within a few seconds.
    fn terminate(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        let exited = self.wait_exit(STOP_TIMEOUT);
        assert!(
            exited.is_some(),
            "still running {STOP_TIMEOUT:?} after SIGTERM; stderr: {}",
            self.stderr()
        );
        let exited = exited.expect("exit status");
        assert_eq!(
            exited.code(),
            Some(0),
            "SIGTERM ends it with exit code 0 ({exited}); stderr: {}",
            self.stderr()
        );
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ignored = self.child.kill();
        }
        let _ignored = self.child.wait();
    }
}

/// `community-chat` (no subcommand: `serve`) from `cwd`, with nothing configured but the
/// listen address.
fn start_serve(cwd: &Path) -> (Process, String) {
    let mut command = command(cwd);
    command.env("LISTEN_ADDR", "127.0.0.1:0");
    let mut process = Process::spawn(command);
    let base = process.wait_listening();
    (process, base)
}

/// Runs the binary to completion (killed after `timeout`); returns (status, stdout, stderr).
fn run_to_end(command: Command, timeout: Duration) -> (ExitStatus, String, String) {
    let mut process = Process::spawn(command);
    let status = process.wait_exit(timeout).unwrap_or_else(|| {
        panic!(
            "still running after {timeout:?}; stdout: {:?}; stderr: {}",
            process.stdout.try_iter().collect::<Vec<_>>(),
            process.stderr()
        )
    });
    // The pipes close at exit; give the reader threads a moment to hand everything over.
    let mut stdout = Vec::new();
    while let Ok(line) = process.stdout.recv_timeout(Duration::from_secs(2)) {
        stdout.push(line);
    }
    std::thread::sleep(Duration::from_millis(50));
    (status, stdout.join("\n"), process.stderr())
}

fn mint(cwd: &Path, org: &str, email: &str) -> String {
    let mut command = command(cwd);
    command.args(["token", "--org", org, "--email", email]);
    let (status, stdout, stderr) = run_to_end(command, Duration::from_secs(30));
    assert!(status.success(), "token failed ({status}): {stderr}");
    let token = stdout.trim().to_owned();
    assert_eq!(
        token.split('.').count(),
        3,
        "token prints a JWT and nothing else: {stdout:?}"
    );
    token
}

struct Client {
    base: String,
    http: reqwest::Client,
    token: String,
}

impl Client {
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("orgid", "my-org")
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("body");
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_restart_and_sigterm() {
    let dir = TempDir::new();
    let data = dir.0.join("data");

    // First start: nothing configured.
    let (mut server, base) = start_serve(&dir.0);
    let printed = server.printed.join("\n");
    assert!(
        printed.contains("token --org") && printed.contains("--email"),
        "with no key configured, it prints how to mint a token: {printed}"
    );
    let db = data.join("community-chat.db");
    let secret_file = data.join("jwt-secret");
    assert!(db.is_file(), "the SQLite file {} exists", db.display());
    assert!(secret_file.is_file(), "the secret {} exists", secret_file.display());
    let secret = std::fs::read_to_string(&secret_file).expect("read secret");
    assert!(secret.trim().len() >= 16, "a secret of 16 bytes or more");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secret_file)
            .expect("secret metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the secret is private to its owner: {mode:o}");
    }

    let token = mint(&dir.0, "my-org", "you@example.com");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client");
    let client = Client {
        base: base.clone(),
        http: http.clone(),
        token: token.clone(),
    };

    let health = http.get(format!("{base}/healthz")).send().await.expect("healthz");
    assert_eq!(health.status(), 200);
    let ready = http.get(format!("{base}/readyz")).send().await.expect("readyz");
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.json::<Value>().await.expect("readyz json")["status"], "ok");

    use reqwest::Method;
    let (status, group) = client
        .send(
            Method::POST,
            "/client/community/groups",
            Some(json!({ "name": "Quickstart", "type": "private" })),
        )
        .await;
    assert_eq!(status, 201, "{group}");
    assert_eq!(group["createdBy"], "you@example.com");
    let id = group["id"].as_str().expect("group id").to_owned();
    let messages = format!("/client/community/groups/{id}/messages");
    let (status, message) = client
        .send(Method::POST, &messages, Some(json!({ "content": "hello" })))
        .await;
    assert_eq!(status, 201, "{message}");
    assert_eq!(message["seq"], 1);
    let (status, history) = client.send(Method::GET, &messages, None).await;
    assert_eq!(status, 200);
    assert_eq!(history["data"], json!([message]));
    let bad = Client {
        base: base.clone(),
        http: http.clone(),
        token: format!("{token}x"),
    };
    assert_eq!(
        bad.send(Method::GET, "/client/community/groups", None).await.0,
        401,
        "a token with a bad signature is refused"
    );

    // SIGTERM: a clean exit, with the client's keep-alive connection still open.
    server.terminate();

    // Restart: same data, same secret, the old token still works.
    let (mut server, base) = start_serve(&dir.0);
    assert_eq!(
        std::fs::read_to_string(&secret_file).expect("read secret"),
        secret,
        "the secret is kept across restarts"
    );
    let client = Client { base, http, token };
    let (status, history) = client.send(Method::GET, &messages, None).await;
    assert_eq!(status, 200, "the old token still works: {history}");
    assert_eq!(history["data"], json!([message]), "the data is kept");
    let (status, second) = client
        .send(Method::POST, &messages, Some(json!({ "content": "again" })))
        .await;
    assert_eq!(status, 201);
    assert_eq!(second["seq"], 2);
    server.terminate();
}

#[test]
fn bad_settings_stop_start_up_naming_the_setting() {
    let cases = [
        ("LISTEN_ADDR", "nope"),
        ("JWT_ALGORITHM", "XX"),
        ("LOG_FORMAT", "yaml"),
        ("DATABASE_URL", "mysql://x"),
        ("JWT_SECRET", "short"),
    ];
    for (name, value) in cases {
        let dir = TempDir::new();
        let mut command = command(&dir.0);
        command.env("LISTEN_ADDR", "127.0.0.1:0").env(name, value);
        let (status, stdout, stderr) = run_to_end(command, Duration::from_secs(30));
        assert!(
            !status.success(),
            "{name}={value} stops start-up; stdout: {stdout}; stderr: {stderr}"
        );
        assert!(
            !stdout.contains("listening on"),
            "{name}={value}: it never listened: {stdout}"
        );
        assert!(
            stderr.contains(name),
            "{name}={value}: the message names {name}: {stderr}"
        );
    }
}

#[test]
fn token_without_a_key_says_how_to_get_one() {
    let dir = TempDir::new();
    let mut command = command(&dir.0);
    command.args(["token", "--org", "my-org", "--email", "you@example.com"]);
    let (status, stdout, stderr) = run_to_end(command, Duration::from_secs(30));
    assert!(!status.success(), "no key, no token: {stdout}");
    assert!(stderr.contains("JWT_SECRET"), "{stderr}");
    assert!(
        !dir.0.join("data").join("jwt-secret").exists(),
        "`token` does not invent a secret that no server uses"
    );
}

#[test]
fn help_lists_the_subcommands() {
    let dir = TempDir::new();
    let mut command = command(&dir.0);
    command.arg("--help");
    let (status, stdout, stderr) = run_to_end(command, Duration::from_secs(30));
    assert!(status.success(), "--help exits 0: {stderr}");
    for subcommand in ["serve", "api", "migrate", "token"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{subcommand} "))),
            "--help lists `{subcommand}`: {stdout}"
        );
    }
}
