//! `community-chat-bench`: see the library (`community_chat_bench`) and BENCHMARKS.md.

fn main() {
    std::process::exit(community_chat_bench::run_with_args(std::env::args_os()));
}
