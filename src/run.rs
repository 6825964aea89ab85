//! What each subcommand does at start-up, and the graceful shutdown they share.

use std::sync::Arc;

use anyhow::Context;
use community_chat_api::AppState;
use community_chat_shared::{
    auth::{Authenticator, KeySource},
    bus::{Bus, InProcessBus, RedisBus},
    config::Config,
    domain::ChatService,
    ids::{Email, OrgId},
    metrics::Metrics,
    store::Store,
};

use crate::cli::{Cli, Command};

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => serve(cli.config).await,
        Some(Command::Serve(args)) => serve(args.config).await,
        Some(Command::Api(args)) => api(args.config).await,
        Some(Command::Gateway(args)) => gateway(args.config).await,
        Some(Command::Migrate(args)) => migrate(args.config).await,
        Some(Command::Token(args)) => {
            args.config.validate()?;
            let auth = Authenticator::from_config(&args.config, false)?;
            let org = OrgId::parse(&args.org).map_err(|e| anyhow::anyhow!("--org: {e}"))?;
            let email = Email::parse(&args.email).map_err(|e| anyhow::anyhow!("--email: {e}"))?;
            println!("{}", auth.mint(&org, &email, args.ttl)?);
            Ok(())
        }
    }
}

/// Standalone: REST (and, with the gateway, socket.io) on one port; SQLite by default.
async fn serve(mut config: Config) -> anyhow::Result<()> {
    config.validate()?;
    let _telemetry = community_chat_shared::telemetry::init(&config, "community-chat")?;
    if config.database_url.is_none() {
        let path = config.data_dir.join("community-chat.db");
        config.database_url = Some(format!("sqlite://{}?mode=rwc", path.display()));
    }
    let store = connect_store(&config).await?;
    store.migrate().await.context("applying the schema")?;
    let auth = Authenticator::from_config(&config, true)?;
    if let KeySource::Generated(path) = &auth.key_source {
        println!(
            "No JWT key configured: using the development secret in {}.\nMint a token with:\n  cargo run --release -- token --org my-org --email you@example.com\n(or: community-chat token --org my-org --email you@example.com, from this folder)",
            path.display()
        );
    }
    let bus = make_bus(&config, Tier::Both).await?;
    start_http(config, store, bus, auth, Tier::Both).await
}

/// The REST tier of a scaled deployment.
async fn api(config: Config) -> anyhow::Result<()> {
    config.validate()?;
    let _telemetry = community_chat_shared::telemetry::init(&config, "community-chat-api")?;
    if config.database_url.is_none() {
        anyhow::bail!("DATABASE_URL is required for `api` (run `serve` for the zero-setup mode)");
    }
    let store = connect_store(&config).await?;
    let auth = Authenticator::from_config(&config, false)?;
    let bus = make_bus(&config, Tier::Api).await?;
    start_http(config, store, bus, auth, Tier::Api).await
}

/// The socket.io tier of a scaled deployment.
async fn gateway(config: Config) -> anyhow::Result<()> {
    config.validate()?;
    let _telemetry = community_chat_shared::telemetry::init(&config, "community-chat-gateway")?;
    if config.database_url.is_none() || config.redis_url.is_none() {
        anyhow::bail!("DATABASE_URL and REDIS_URL are required for `gateway` (run `serve` for the zero-setup mode)");
    }
    let store = connect_store(&config).await?;
    let auth = Authenticator::from_config(&config, false)?;
    let bus = make_bus(&config, Tier::Gateway).await?;
    start_http(config, store, bus, auth, Tier::Gateway).await
}

/// Which routes a process serves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tier {
    /// REST and socket.io (`serve`).
    Both,
    Api,
    Gateway,
}

async fn migrate(config: Config) -> anyhow::Result<()> {
    config.validate()?;
    let _telemetry = community_chat_shared::telemetry::init(&config, "community-chat-migrate")?;
    if config.database_url.is_none() {
        anyhow::bail!("DATABASE_URL is required for `migrate`");
    }
    let store = connect_store(&config).await?;
    store.migrate().await.context("applying the schema")?;
    println!("schema is up to date");
    store.close().await;
    Ok(())
}

async fn connect_store(config: &Config) -> anyhow::Result<Store> {
    let url = config.database_url.as_deref().unwrap_or_default();
    Store::connect_with(url, config.database_max_connections, config.database_post_batch)
        .await
        .map_err(|e| anyhow::anyhow!("DATABASE_URL: cannot connect: {e}"))
}

/// Redis when `REDIS_URL` is set; otherwise the in-process bus (one process holds every socket).
/// Only processes with a gateway subscribe.
async fn make_bus(config: &Config, tier: Tier) -> anyhow::Result<Arc<dyn Bus>> {
    match &config.redis_url {
        Some(url) => {
            let subscribe = tier != Tier::Api;
            let bus = RedisBus::connect(
                url,
                &config.redis_channel_prefix,
                config.redis_sharded_pubsub,
                subscribe,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(Arc::new(bus))
        }
        None => Ok(Arc::new(InProcessBus::default())),
    }
}

async fn start_http(
    config: Config,
    store: Store,
    bus: Arc<dyn Bus>,
    auth: Authenticator,
    tier: Tier,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    register_pool_metrics(&metrics, store.clone());
    let auth = Arc::new(auth);
    let service = ChatService::new(store.clone(), bus, config.limits.clone());
    let state = AppState::new(service.clone(), auth.clone(), metrics.clone());
    let draining = state.draining.clone();
    let mut router = match tier {
        Tier::Gateway => community_chat_api::ops_router(state),
        Tier::Both | Tier::Api => community_chat_api::router(state, &config).map_err(|e| anyhow::anyhow!(e))?,
    };
    let mut gateway = None;
    if tier != Tier::Api {
        let (layer, handle) = community_chat_gateway::build(service, auth, config.gateway.clone(), &metrics);
        router = router.layer(layer).layer(axum::middleware::map_request(
            community_chat_gateway::detach_request_buffers,
        ));
        gateway = Some(handle);
    }
    let listener = tokio::net::TcpListener::bind(config.listen_addr)
        .await
        .with_context(|| format!("LISTEN_ADDR {}: cannot listen", config.listen_addr))?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "listening");
    println!("listening on http://{local}");
    let deadline = std::time::Duration::from_secs(config.shutdown_drain_seconds);
    let (stopping_tx, mut stopping) = tokio::sync::watch::channel(false);
    let drain = async move {
        shutdown_signal().await;
        draining.store(true, std::sync::atomic::Ordering::Relaxed);
        if stopping_tx.send(true).is_err() {
            tracing::debug!("nobody watches the shutdown deadline");
        }
        if let Some(gateway) = gateway {
            // Closing the transports (not a socket.io disconnect) makes the clients reconnect
            // by themselves, to another gateway, and catch up by seq.
            let sockets = gateway.socket_count();
            tracing::info!(sockets, "closing sockets so their clients reconnect elsewhere");
            if tokio::time::timeout(deadline, gateway.io.close()).await.is_err() {
                tracing::warn!("closing sockets took longer than the drain deadline");
            }
        }
    };
    let deadline_passed = async move {
        while !*stopping.borrow() {
            if stopping.changed().await.is_err() {
                return std::future::pending::<()>().await;
            }
        }
        tokio::time::sleep(deadline + std::time::Duration::from_secs(1)).await;
    };
    tokio::select! {
        served = axum::serve(listener, router).with_graceful_shutdown(drain) => served?,
        _ = deadline_passed => tracing::warn!("drain deadline passed with requests still open; exiting"),
    }
    tracing::info!("stopped");
    store.close().await;
    Ok(())
}

/// The database pool's gauges and the group commit counters on `/metrics`.
fn register_pool_metrics(metrics: &Metrics, store: Store) {
    metrics.add_source(move |text| {
        let pool = store.pool_stats();
        text.gauge(
            "db_pool_connections",
            "Database connections of this process's pool, by state.",
        )
        .sample(&[("state", "in_use")], pool.open.saturating_sub(pool.idle))
        .sample(&[("state", "idle")], pool.idle);
        text.gauge(
            "db_pool_max_connections",
            "Most connections the pool opens (DATABASE_MAX_CONNECTIONS).",
        )
        .sample(&[], pool.max);
        let batches = store.batch_stats();
        text.counter(
            "db_post_batches_total",
            "Statements that stored members' posts together, one commit each (group commit, Postgres).",
        )
        .sample(&[], batches.batches);
        text.counter(
            "db_post_batch_posts_total",
            "Posts those statements carried; divided by db_post_batches_total, the mean batch size.",
        )
        .sample(&[], batches.posts);
        text.counter(
            "db_post_batch_retries_total",
            "Posts of failed batches, posted again on their own.",
        )
        .sample(&[], batches.retried);
    });
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown signal received, draining");
}
