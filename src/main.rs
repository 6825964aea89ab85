//! `community-chat`: one binary for every role. `serve` (the default) runs REST and socket.io
//! in one process on SQLite with an in-process bus; `api` and `gateway` are the scaled tiers;
//! `migrate` applies the schema; `token` mints a development JWT.

mod cli;
mod run;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    // Once logging is set up, a panic anywhere (a request handler included) is one log event.
    community_chat_api::panics::report_panics_once();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
