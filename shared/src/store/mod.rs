//! Persistence: one sea-orm store for Postgres (scaled mode) and SQLite (standalone). SQL lives
//! here and nowhere else; the domain calls these methods with already-validated values, and
//! they take and return domain types (the sea-orm entities stay in here).
//!
//! - `post.rs`: posting a message (rules, replay, seq), one statement on Postgres.
//! - `group_commit.rs`: concurrent posts share that statement and one commit (Postgres).
//! - `groups.rs`: groups and members (the last-admin rule is checked under the group's lock).
//! - `messages.rs`: history, catch-up and cursor reads. `lookups.rs`: shared "my groups" reads.
//! - `migration.rs`, `entity/`: the schema.

mod entity;
mod group_commit;
mod groups;
mod lookups;
mod messages;
pub mod migration;
mod post;

use std::{sync::Arc, time::Duration};

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend, TransactionTrait,
};
use sea_orm_migration::MigratorTrait;
use tokio::sync::{Mutex, MutexGuard};

pub use group_commit::BatchStats;
pub use groups::MemberChange;
pub use post::PostOutcome;
// Public for the test of the post statement's plan (tests/post_rules.rs), not an API.
#[doc(hidden)]
pub use post::POST_SQL;

use crate::error::DomainError;

#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
    /// SQLite allows one writer: write transactions queue here instead of failing with
    /// "database is locked". `None` on Postgres, where row locks serialise per group only.
    write_gate: Option<Arc<Mutex<()>>>,
    max_connections: u32,
    /// Group commit of members' posts (Postgres with a batch size above 1).
    batcher: Option<group_commit::PostBatcher>,
    /// Coalesced "my groups" look-ups of socket handshakes (Postgres).
    lookups: Option<lookups::MembershipLookups>,
}

/// Most posts stored by one statement and one commit, unless configured.
pub const DEFAULT_POST_BATCH: u32 = 256;

/// The connection pool right now, for `/metrics`.
#[derive(Clone, Copy, Debug)]
pub struct PoolStats {
    pub open: u32,
    pub idle: u32,
    pub max: u32,
}

/// A write transaction, holding the SQLite write gate (if any) until it ends.
pub(crate) struct WriteTxn<'a> {
    pub txn: DatabaseTransaction,
    _gate: Option<MutexGuard<'a, ()>>,
}

impl Store {
    /// Connects (SQLite files and folders are created). Fails fast when the database does not
    /// answer: a request waits at most 3 s for a connection, then gets 503.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, DomainError> {
        Self::connect_with(url, max_connections, DEFAULT_POST_BATCH).await
    }

    /// [`Store::connect`], storing concurrent posts up to `post_batch` at a time in one commit
    /// on Postgres (1: each post on its own). Group commit has a connection of its own, one of
    /// the `max_connections`; with `max_connections` 1 posts go one by one.
    pub async fn connect_with(url: &str, max_connections: u32, post_batch: u32) -> Result<Self, DomainError> {
        let is_sqlite = url.starts_with("sqlite:");
        if is_sqlite
            && let Some(path) = sqlite_path(url)
            && let Some(dir) = std::path::Path::new(&path).parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| DomainError::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
        }
        // Group commit takes one of the connections for itself (Postgres, with 2 or more).
        let is_postgres = url.starts_with("postgres:") || url.starts_with("postgresql:");
        let batcher = if is_postgres && post_batch > 1 && max_connections >= 2 {
            Some(group_commit::PostBatcher::start(url, post_batch as usize)?)
        } else {
            None
        };
        let pool_size = max_connections - u32::from(batcher.is_some());
        let mut options = ConnectOptions::new(url.to_owned());
        options
            .max_connections(pool_size)
            .min_connections(0)
            .connect_timeout(Duration::from_secs(3))
            .acquire_timeout(Duration::from_secs(3))
            .idle_timeout(Duration::from_secs(300))
            .sqlx_logging(false)
            .test_before_acquire(false)
            .map_sqlx_sqlite_opts(|o| {
                o.create_if_missing(true)
                    .journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(10))
                    .foreign_keys(true)
            });
        let db = Database::connect(options).await?;
        let lookups = (db.get_database_backend() == DbBackend::Postgres)
            .then(|| lookups::MembershipLookups::start(db.get_postgres_connection_pool().clone()));
        Ok(Self {
            db,
            write_gate: is_sqlite.then(|| Arc::new(Mutex::new(()))),
            max_connections,
            batcher,
            lookups,
        })
    }

    /// Open and idle connections of the pool.
    pub fn pool_stats(&self) -> PoolStats {
        let (open, idle) = match self.backend() {
            DbBackend::Sqlite => {
                let pool = self.db.get_sqlite_connection_pool();
                (pool.size(), pool.num_idle())
            }
            DbBackend::Postgres => {
                let pool = self.db.get_postgres_connection_pool();
                (pool.size(), pool.num_idle())
            }
            _ => (0, 0),
        };
        let (open, idle) = match &self.batcher {
            Some(batcher) => {
                let (b_open, b_idle) = batcher.pool_size();
                (open + b_open, idle as u32 + b_idle)
            }
            None => (open, idle as u32),
        };
        PoolStats {
            open,
            idle,
            max: self.max_connections,
        }
    }

    /// Group commit figures (all zero without group commit: SQLite, or a batch size of 1).
    pub fn batch_stats(&self) -> BatchStats {
        self.batcher.as_ref().map(|b| b.stats()).unwrap_or_default()
    }

    /// Whether concurrent [`Store::group_ids_of`] calls share queries (Postgres), so callers
    /// need not ration them.
    pub fn coalesces_lookups(&self) -> bool {
        self.lookups.is_some()
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), DomainError> {
        migration::Migrator::up(&self.db, None).await?;
        Ok(())
    }

    /// `SELECT 1`, for `/readyz`.
    pub async fn ping(&self) -> Result<(), DomainError> {
        self.db.execute_unprepared("SELECT 1").await?;
        Ok(())
    }

    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    pub(crate) async fn begin_write(&self) -> Result<WriteTxn<'_>, DomainError> {
        let gate = match &self.write_gate {
            Some(gate) => Some(gate.lock().await),
            None => None,
        };
        let txn = self.db.begin().await?;
        Ok(WriteTxn { txn, _gate: gate })
    }

    pub async fn close(self) {
        if let Err(e) = self.db.close().await {
            tracing::warn!(error = %e, "closing the database pool failed");
        }
    }
}

fn sqlite_path(url: &str) -> Option<String> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    (!path.is_empty() && path != ":memory:").then(|| path.to_owned())
}

/// Timestamps are kept to the millisecond: Postgres keeps microseconds, SQLite nanoseconds,
/// JavaScript clients milliseconds; truncating once makes all three agree.
pub fn now_millis() -> chrono::DateTime<chrono::Utc> {
    use chrono::{DurationRound, TimeDelta};
    let now = chrono::Utc::now();
    now.duration_trunc(TimeDelta::milliseconds(1)).unwrap_or(now)
}
