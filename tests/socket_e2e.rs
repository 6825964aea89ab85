//! End-to-end tests with the official socket.io client: runs the Node suite in `tests/e2e`
//! (`node --test`) against this package's binary, in the scaled topology (2 API + 2 gateway
//! processes on Postgres and Redis) and standalone (`serve`). See `tests/e2e/cluster.mjs`.
//!
//! Needs `node` and `npm` (v20+), Postgres on 127.0.0.1:5432 (`TEST_DATABASE_URL`) and Redis on
//! 127.0.0.1:6379 (the Redis-restart and fault tests run private Postgres and Redis servers of their
//! own). A plain `cargo test` lists it as ignored (it needs Node); the test command runs it, and
//! so does `cargo test --test socket_e2e -- --include-ignored`.
//! `E2E_MODES=scaled` or `=standalone` runs one topology only; node's report (printed as it
//! runs, not captured) counts what that leaves out as skipped. `E2E_KEEP_LOGS=1` keeps the
//! server logs.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

/// The whole Node suite must finish within this (`E2E_TIMEOUT_SECS` overrides it).
const SUITE_TIMEOUT: Duration = Duration::from_secs(600);

fn e2e_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("e2e")
}

/// Waits for a child with a deadline; on timeout the child's process group gets SIGTERM (the
/// servers stop, Redis is started again), then SIGKILL.
fn wait_with_timeout(child: &mut std::process::Child, timeout: Duration, what: &str) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            return status;
        }
        if start.elapsed() > timeout {
            eprintln!("{what}: no result after {timeout:?}: stopping it");
            let group = format!("-{}", child.id());
            let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
            let grace = Instant::now();
            while grace.elapsed() < Duration::from_secs(15) {
                if let Some(status) = child.try_wait().expect("wait for child") {
                    panic!("{what} timed out after {timeout:?} (exit {status})");
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} timed out after {timeout:?} and was killed");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn spawn_in_own_group(command: &mut Command) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    command
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {:?}: {e} (this test needs Node.js 20+ with npm)",
                command.get_program()
            )
        })
}

#[test]
#[ignore = "needs Node.js 20+ and npm (the official socket.io client); the test command runs it"]
fn socket_io_end_to_end() {
    let dir = e2e_dir();
    if !dir.join("node_modules").join("socket.io-client").is_dir() {
        eprintln!("installing the e2e suite's npm packages (npm ci) in {}", dir.display());
        let mut npm = Command::new("npm");
        npm.args(["ci", "--no-audit", "--no-fund"]).current_dir(&dir);
        let status = wait_with_timeout(&mut spawn_in_own_group(&mut npm), Duration::from_secs(300), "npm ci");
        assert!(status.success(), "npm ci in {} failed: {status}", dir.display());
    }

    // The test files, listed explicitly (a directory argument means different things to
    // different Node versions); files run one after the other.
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read tests/e2e")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".test.mjs"))
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.test.mjs files in {}", dir.display());

    let mut node = Command::new("node");
    node.arg("--test")
        .arg("--test-concurrency=1")
        .args(&files)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("COMMUNITY_CHAT_BIN", env!("CARGO_BIN_EXE_community-chat"));
    // This test starts its own processes: an external topology from the caller's environment
    // would make the suite skip the tests that need them.
    for var in ["E2E_API_URLS", "E2E_GATEWAY_URLS", "E2E_JWT_SECRET", "E2E_REDIS_PREFIX"] {
        node.env_remove(var);
    }
    eprintln!("running {node:?}");
    let timeout = std::env::var("E2E_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(SUITE_TIMEOUT, Duration::from_secs);
    let status = wait_with_timeout(&mut spawn_in_own_group(&mut node), timeout, "node --test");
    assert!(
        status.success(),
        "the socket.io end-to-end suite failed ({status}): see its output above"
    );
}
