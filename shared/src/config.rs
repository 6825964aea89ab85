//! Configuration: every setting is an environment variable and a CLI flag of the same name
//! (DESIGN.md, Configuration). clap parses and names a bad value; `validate` checks the
//! combinations clap cannot.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, ValueEnum};

/// JWT signature algorithms the service accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with the shared secret `JWT_SECRET`.
    Hs256,
    /// RSA PKCS#1 v1.5 SHA-256 with the public key in `JWT_PUBLIC_KEY_FILE`.
    Rs256,
    /// ECDSA P-256 SHA-256 with the public key in `JWT_PUBLIC_KEY_FILE`.
    Es256,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Settings shared by every subcommand.
#[derive(Clone, Debug, Args)]
pub struct Config {
    /// Postgres (`postgres://user@host/db`) or SQLite (`sqlite://path?mode=rwc`) URL. Unset: `serve`
    /// uses the SQLite file `DATA_DIR/community-chat.db`; `api`, `gateway` and `migrate` require it.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Most database connections this process opens.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_max_connections: u32,

    /// Most members' posts stored by one statement and one commit (Postgres group commit). Posts
    /// that arrive while earlier ones are being written go out together; a lone post is never
    /// held back. 1 stores each post on its own.
    #[arg(long, env = "DATABASE_POST_BATCH", default_value_t = crate::store::DEFAULT_POST_BATCH, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_post_batch: u32,

    /// Redis URL (`redis://host:6379`; `redis-cluster://host:port` for a cluster with sharded
    /// pub/sub). Unset: events stay in this process (standalone `serve` only).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Use sharded pub/sub (SPUBLISH/SSUBSCRIBE), as a Redis Cluster needs. On by default with a
    /// `redis-cluster://` URL.
    #[arg(long, env = "REDIS_SHARDED_PUBSUB")]
    pub redis_sharded_pubsub: Option<bool>,

    /// Prefix of every Redis channel, so several deployments or test runs can share one Redis.
    #[arg(long, env = "REDIS_CHANNEL_PREFIX", default_value = "community-chat")]
    pub redis_channel_prefix: String,

    /// Address and port to listen on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen_addr: SocketAddr,

    /// Folder for the standalone SQLite file and the generated development JWT secret.
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Shared secret for HS256 tokens. Unset (and no public key): `serve` generates one in
    /// `DATA_DIR/jwt-secret` and prints how to mint a token with it.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// PEM public key file for RS256 or ES256 tokens.
    #[arg(long, env = "JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// Signature algorithm of incoming tokens. Default: HS256 with a secret, RS256 with a key file.
    #[arg(long, env = "JWT_ALGORITHM", ignore_case = true)]
    pub jwt_algorithm: Option<JwtAlgorithm>,

    /// Required `iss` claim (unchecked when unset).
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim (unchecked when unset).
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Claim that holds the caller's e-mail; `sub` is used when it is absent.
    #[arg(long, env = "JWT_EMAIL_CLAIM", default_value = "email")]
    pub jwt_email_claim: String,

    /// Claim that holds the caller's org; it must equal the `orgid` header / handshake `orgId`.
    #[arg(long, env = "JWT_ORG_CLAIM", default_value = "orgId")]
    pub jwt_org_claim: String,

    /// Comma-separated origins allowed by CORS, or `*`. Unset: no CORS headers.
    #[arg(long, env = "CORS_ORIGINS")]
    pub cors_origins: Option<String>,

    /// Log filter, e.g. `info` or `community_chat=debug,info`.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub rust_log: String,

    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// OTLP/HTTP endpoint for trace export, e.g. `http://collector:4318` (traces go to
    /// `/v1/traces`; `OTEL_EXPORTER_OTLP_PROTOCOL` = `http/protobuf` (default) or `http/json`).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otel_exporter_otlp_endpoint: Option<String>,

    /// Seconds a process may take to drain on SIGTERM (stop accepting, close sockets so their
    /// clients reconnect to another gateway, finish requests) before it exits anyway. Keep the
    /// pod's terminationGracePeriodSeconds above it.
    #[arg(long, env = "SHUTDOWN_DRAIN_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub shutdown_drain_seconds: u64,

    #[command(flatten)]
    pub limits: Limits,

    #[command(flatten)]
    pub gateway: GatewayLimits,
}

/// Per-socket bounds of the socket.io gateway: memory and abuse stay bounded per connection.
#[derive(Clone, Debug, Args)]
pub struct GatewayLimits {
    /// Most packets queued to one socket; a client that falls this far behind is disconnected
    /// (it reconnects and catches up by seq).
    #[arg(long, env = "SOCKET_MAX_QUEUED_PACKETS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(8..=65_536))]
    pub socket_max_queued_packets: u32,

    /// Most `sendGroupMessage` events per socket per second (burst: twice that); over it the
    /// send is answered with a 429 error.
    #[arg(long, env = "SOCKET_SENDS_PER_SECOND", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub socket_sends_per_second: u32,

    /// Most bytes in one incoming socket.io message; larger ones close the connection.
    #[arg(long, env = "SOCKET_MAX_PAYLOAD_BYTES", default_value_t = 1_048_576, value_parser = clap::value_parser!(u32).range(1024..))]
    pub socket_max_payload_bytes: u32,

    /// Bytes the WebSocket reads at a time per connection; larger messages take several reads.
    /// Small, because every idle socket holds one (1 KiB here saves 3 KiB per socket over 4 KiB).
    #[arg(long, env = "SOCKET_READ_BUFFER_BYTES", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(512..))]
    pub socket_read_buffer_bytes: u32,

    /// Least milliseconds between two relayed `groupTyping` events of one user in one group
    /// (a change between typing and not typing always passes).
    #[arg(long, env = "TYPING_THROTTLE_MS", default_value_t = 1000)]
    pub typing_throttle_ms: u64,

    /// Engine.IO ping interval in milliseconds.
    #[arg(long, env = "SOCKET_PING_INTERVAL_MS", default_value_t = 25_000, value_parser = clap::value_parser!(u64).range(1000..))]
    pub socket_ping_interval_ms: u64,

    /// Engine.IO ping timeout in milliseconds: a client silent this long after a ping is dropped.
    #[arg(long, env = "SOCKET_PING_TIMEOUT_MS", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1000..))]
    pub socket_ping_timeout_ms: u64,

    /// Milliseconds the gateway holds an out-of-order message before fetching the missing ones
    /// from the store.
    #[arg(long, env = "GAP_FILL_DELAY_MS", default_value_t = 150)]
    pub gap_fill_delay_ms: u64,
}

/// Input limits. Requests over them answer 400 (fields) or 413 (the body) and change nothing.
#[derive(Clone, Debug, Args)]
pub struct Limits {
    /// Most characters in a message's content.
    #[arg(long, env = "MAX_CONTENT_CHARS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_content_chars: u32,

    /// Most attachments on one message.
    #[arg(long, env = "MAX_ATTACHMENTS", default_value_t = 10)]
    pub max_attachments: u32,

    /// Most characters in a group name.
    #[arg(long, env = "MAX_NAME_CHARS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_name_chars: u32,

    /// Most characters in a group description.
    #[arg(long, env = "MAX_DESCRIPTION_CHARS", default_value_t = 1_000)]
    pub max_description_chars: u32,

    /// Most bytes in a request body (answered 413 above it).
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 1_048_576, value_parser = clap::value_parser!(u32).range(1024..))]
    pub max_body_bytes: u32,

    /// Most members listed in one create-group request.
    #[arg(long, env = "MAX_INITIAL_MEMBERS", default_value_t = 1_000)]
    pub max_initial_members: u32,

    /// Allowed message content types, comma-separated.
    #[arg(
        long,
        env = "CONTENT_TYPES",
        default_value = "text,markdown,image,file,link",
        value_delimiter = ','
    )]
    pub content_types: Vec<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_content_chars: 10_000,
            max_attachments: 10,
            max_name_chars: 100,
            max_description_chars: 1_000,
            max_body_bytes: 1_048_576,
            max_initial_members: 1_000,
            content_types: ["text", "markdown", "image", "file", "link"].map(String::from).to_vec(),
        }
    }
}

impl Config {
    /// Checks what clap cannot: combinations and formats. The error names the setting.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.jwt_secret.is_some() && self.jwt_public_key_file.is_some() {
            anyhow::bail!("JWT_SECRET and JWT_PUBLIC_KEY_FILE are both set: choose one");
        }
        if let Some(secret) = &self.jwt_secret
            && secret.len() < 16
        {
            anyhow::bail!("JWT_SECRET is shorter than 16 bytes");
        }
        match (self.jwt_algorithm, &self.jwt_public_key_file, &self.jwt_secret) {
            (Some(JwtAlgorithm::Hs256), Some(_), _) => {
                anyhow::bail!("JWT_ALGORITHM=HS256 needs JWT_SECRET, not JWT_PUBLIC_KEY_FILE")
            }
            (Some(JwtAlgorithm::Rs256 | JwtAlgorithm::Es256), None, _) => {
                anyhow::bail!("JWT_ALGORITHM RS256/ES256 needs JWT_PUBLIC_KEY_FILE")
            }
            _ => {}
        }
        if let Some(url) = &self.database_url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://") || url.starts_with("sqlite:"))
        {
            anyhow::bail!("DATABASE_URL must start with postgres://, postgresql:// or sqlite:");
        }
        if let Some(url) = &self.redis_url
            && !["redis://", "rediss://", "redis-cluster://", "rediss-cluster://"]
                .iter()
                .any(|p| url.starts_with(p))
        {
            anyhow::bail!("REDIS_URL must start with redis://, rediss:// or redis-cluster://");
        }
        if self.redis_channel_prefix.is_empty() || self.redis_channel_prefix.contains(char::is_whitespace) {
            anyhow::bail!("REDIS_CHANNEL_PREFIX must be non-empty without spaces");
        }
        if self.jwt_email_claim.is_empty() || self.jwt_org_claim.is_empty() {
            anyhow::bail!("JWT_EMAIL_CLAIM and JWT_ORG_CLAIM must not be empty");
        }
        if self.limits.content_types.iter().any(|t| t.trim().is_empty()) {
            anyhow::bail!("CONTENT_TYPES has an empty entry");
        }
        tracing_subscriber::EnvFilter::try_new(&self.rust_log)
            .map_err(|e| anyhow::anyhow!("RUST_LOG is not a valid filter: {e}"))?;
        Ok(())
    }
}

#[derive(clap::Parser)]
struct ConfigOnly {
    #[command(flatten)]
    config: Config,
}

impl Config {
    /// Parses a configuration from flags alone (environment variables still apply), for tests
    /// and embedding: `Config::from_flags(["--jwt-secret", "..."])`.
    pub fn from_flags<I, T>(flags: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::Parser;
        let args = std::iter::once(std::ffi::OsString::from("community-chat")).chain(flags.into_iter().map(Into::into));
        ConfigOnly::try_parse_from(args).map(|c| c.config)
    }
}
