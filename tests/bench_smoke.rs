//! Runs the benchmark harness (`bench/`, `community-chat-bench --smoke`) against the debug
//! server binary: a small version of every scenario (fan-out, persist, idle, connect, reconnect
//! storm, soak, rate ramp) on a scaled topology of its own (scratch Postgres database, 2 api +
//! 2 gateway processes, one Redis prefix). It fails if any message was lost or any request errored.
//! Needs Postgres on 127.0.0.1:5432 and Redis on 127.0.0.1:6379 like the other tests, so it
//! always runs; `cargo test -- --skip bench_smoke` leaves it out of a run.

#[test]
fn bench_smoke_loses_nothing() {
    let bin = env!("CARGO_BIN_EXE_community-chat");
    let code = community_chat_bench::run_with_args(["community-chat-bench", "--smoke", "--bin", bin]);
    assert_eq!(code, 0, "community-chat-bench --smoke failed (see its output above)");
}
