//! Command line: subcommands, each taking the shared configuration (env or flags).

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use community_chat_shared::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "community-chat",
    version,
    about = "Multi-tenant group chat: REST API and socket.io gateway in one binary",
    long_about = "Multi-tenant group chat: REST API and socket.io gateway in one binary.\n\n\
        Without a subcommand it runs `serve`: REST and socket.io on one port, an SQLite file under \
        DATA_DIR and an in-process event bus. Every option is also an environment variable."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// REST and socket.io in one process (the default). SQLite and an in-process bus unless
    /// DATABASE_URL / REDIS_URL are set. Applies the schema at start-up.
    Serve(ConfigArgs),
    /// The REST tier only (scaled mode): needs DATABASE_URL; publishes events to REDIS_URL.
    Api(ConfigArgs),
    /// The socket.io tier only (scaled mode): needs DATABASE_URL and REDIS_URL.
    Gateway(ConfigArgs),
    /// Applies pending schema migrations to DATABASE_URL and exits.
    Migrate(ConfigArgs),
    /// Prints a development JWT signed with the configured HS256 secret.
    Token(TokenArgs),
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The org the token is for (the `orgId` claim).
    #[arg(long)]
    pub org: String,
    /// The caller's e-mail (the `email` and `sub` claims).
    #[arg(long)]
    pub email: String,
    /// Lifetime, e.g. `30m`, `1h`, `7d`, `3600s`.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
    #[command(flatten)]
    pub config: Config,
}

fn parse_ttl(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("'{raw}' is not a duration like 30m, 1h or 7d"))?;
    let seconds = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("'{raw}': unit must be s, m, h or d")),
    };
    if seconds == 0 {
        return Err("ttl must be more than 0".into());
    }
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_units() {
        assert_eq!(parse_ttl("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_ttl("7d").unwrap(), Duration::from_secs(604_800));
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("h").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
