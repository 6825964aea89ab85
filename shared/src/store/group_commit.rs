//! Group commit for posts on Postgres: members' posts that arrive while earlier ones are being
//! written are stored together, by one statement in one transaction, so a burst of N posts
//! costs one round trip, one commit and one WAL flush instead of N. Nothing waits for a batch
//! to fill: a post that finds a free slot goes out at once (alone, when nothing else is
//! queued), so a quiet service keeps its latency; under load, what queued behind the slots in
//! flight makes the next batch.
//!
//! The batch runs the one post statement ([`super::post::POST_SQL`]) with one element per post,
//! so it keeps every rule of a post alone, and each post gets its own answer (stored, replayed,
//! 404, 403, 400) from the same round trip. Two posts with the same `clientMessageId` never
//! share a batch. When the server refuses a batch (e.g. a retry racing on another pod hits the
//! unique index, or a group row stays locked past `lock_timeout`), its posts are posted one by
//! one on the pool, which sorts out who was first. A lost connection, or a failure after which
//! the outcome is unknown, answers 503.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use sea_orm::sqlx::{
    self, Connection, PgPool, Postgres,
    pool::PoolConnection,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio::sync::{mpsc, oneshot};

use super::post::{Post, Written, write_postgres};
use crate::{domain::model::Message, error::DomainError};

/// Batches written at once per process: the next one fills while this one is written. Two
/// halved the posts per commit and lost a third of the throughput (BENCHMARKS.md); several API
/// pods still write side by side.
const IN_FLIGHT: usize = 1;
/// Longest a post waits for the connection, counted from when it asked, queueing included: the
/// same 3 s after which any request gets 503, even when the batch before it waited too.
const CONNECTION_WAIT: Duration = Duration::from_secs(3);
/// Longest wait for a batch statement's answer; the server's own `statement_timeout` is 5 s.
const STATEMENT_WAIT: Duration = Duration::from_secs(6);
/// Posts waiting for a slot before callers feel back-pressure.
const QUEUE: usize = 4096;
/// How long the batch connection keeps its prepared statement. Its generic plan is made once
/// from the table sizes of that moment, and Postgres re-makes it only after an ANALYZE, which
/// may never come (autovacuum off) or come late on a fast-growing table: a plan made on an
/// empty `groups` table probes the wrong index (BENCHMARKS.md, "Plans"). Closing the statement
/// once a minute makes the next batch plan from the sizes of now, for one planning a minute,
/// on the same connection.
const REPLAN_AFTER: Duration = Duration::from_secs(60);

/// What the batch found and did for one post; `None`: the batch failed (not for a lost
/// connection), post this one on its own.
pub(crate) type Batched = Option<Written>;

struct Pending {
    post: Arc<Post>,
    /// When the post asked; it waits at most [`CONNECTION_WAIT`] from here for a connection.
    queued: Instant,
    reply: oneshot::Sender<Result<Batched, DomainError>>,
}

/// Handle to the batching task of one process.
#[derive(Clone)]
pub(crate) struct PostBatcher {
    tx: mpsc::Sender<Pending>,
    counters: Arc<Counters>,
    pool: PgPool,
}

/// Totals since start, for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Statements run (each one commit).
    batches: AtomicU64,
    /// Posts those statements carried.
    posts: AtomicU64,
    /// Posts of failed batches, retried on their own.
    retried: AtomicU64,
}

/// Group commit figures since start: statements, the posts they carried, posts retried alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    pub batches: u64,
    pub posts: u64,
    pub retried: u64,
}

impl PostBatcher {
    /// Starts the task, with a connection of its own to `url` (opened on first use); the task
    /// ends when the last handle is dropped. The connection plans its statements once
    /// (`plan_cache_mode = force_generic_plan`): planning the batch statement anew for each
    /// batch, as Postgres chose to, cost ~15% of its time per post (BENCHMARKS.md). Only this
    /// connection does so; the pool's queries keep Postgres's own choice.
    pub(crate) fn start(url: &str, max_batch: usize) -> Result<Self, DomainError> {
        let options: PgConnectOptions = url
            .parse::<PgConnectOptions>()
            .map_err(|e| DomainError::Unavailable(format!("DATABASE_URL: {e}")))?
            .options([
                ("plan_cache_mode", "force_generic_plan"),
                // A group row locked for long (a big group being deleted, a stuck session)
                // must not stall every post of this process behind it: the batch fails after
                // this and its posts go one by one on the pool, where only that group's wait.
                ("lock_timeout", "500ms"),
                ("statement_timeout", "5s"),
            ]);
        let pool = PgPoolOptions::new()
            .max_connections(IN_FLIGHT as u32)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(3))
            .idle_timeout(Duration::from_secs(300))
            // No ping before each batch: a broken connection fails its batch with 503 and is
            // replaced, as in the main pool.
            .test_before_acquire(false)
            .connect_lazy_with(options);
        let (tx, rx) = mpsc::channel(QUEUE);
        let counters = Arc::new(Counters::default());
        tokio::spawn(run(pool.clone(), rx, max_batch.max(1), counters.clone()));
        Ok(Self { tx, counters, pool })
    }

    /// Open and idle connections of its pool.
    pub(crate) fn pool_size(&self) -> (u32, u32) {
        (
            self.pool.size(),
            u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX),
        )
    }

    pub(crate) fn stats(&self) -> BatchStats {
        BatchStats {
            batches: self.counters.batches.load(Ordering::Relaxed),
            posts: self.counters.posts.load(Ordering::Relaxed),
            retried: self.counters.retried.load(Ordering::Relaxed),
        }
    }

    pub(crate) async fn post(&self, post: &Arc<Post>) -> Result<Batched, DomainError> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            post: post.clone(),
            queued: Instant::now(),
            reply,
        };
        match tokio::time::timeout(CONNECTION_WAIT, self.tx.send(pending)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Ok(None),
            Err(_) => {
                return Err(DomainError::Unavailable(
                    "posts are queued beyond the wait for the database".into(),
                ));
            }
        }
        // A dropped sender means the task went away mid-batch: post on its own.
        answer.await.unwrap_or(Ok(None))
    }
}

async fn run(pool: PgPool, mut rx: mpsc::Receiver<Pending>, max_batch: usize, counters: Arc<Counters>) {
    // The connection is kept from batch to batch: returned to the pool, sqlx would ping it
    // each time (a round trip per batch). It is let go after a failure other than the
    // server refusing a statement; its statements are re-planned after [`REPLAN_AFTER`].
    let mut conn: Option<Kept> = None;
    // Posts set aside because a post with the same clientMessageId was in the batch before.
    let mut held: Vec<Pending> = Vec::new();
    loop {
        let mut batch = Vec::with_capacity(max_batch.min(64));
        let mut keys = HashSet::new();
        let mut take = |pending: Pending, batch: &mut Vec<Pending>, held: &mut Vec<Pending>| {
            let repeated = idempotency_key(&pending.post.message).is_some_and(|key| !keys.insert(key));
            if repeated {
                held.push(pending)
            } else {
                batch.push(pending)
            }
        };
        let mut carried = std::mem::take(&mut held);
        let rest = carried.split_off(carried.len().min(max_batch));
        held = rest;
        for pending in carried {
            take(pending, &mut batch, &mut held);
        }
        if batch.is_empty() {
            match rx.recv().await {
                Some(pending) => take(pending, &mut batch, &mut held),
                None => return,
            }
        }
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(pending) => take(pending, &mut batch, &mut held),
                Err(_) => break,
            }
        }
        // One batch at a time; what arrives meanwhile waits in the channel for the next.
        write(&pool, &mut conn, batch, &counters).await;
    }
}

fn idempotency_key(message: &Message) -> Option<(String, uuid::Uuid, String, String)> {
    let client_id = message.client_message_id.as_ref()?;
    Some((
        message.org_id.as_str().to_owned(),
        message.group_id.0,
        message.from.as_str().to_owned(),
        client_id.clone(),
    ))
}

/// The batch connection and when its statements were prepared.
struct Kept {
    conn: PoolConnection<Postgres>,
    since: Instant,
}

async fn write(pool: &PgPool, kept: &mut Option<Kept>, batch: Vec<Pending>, counters: &Counters) {
    if let Some(k) = kept.as_mut()
        && k.since.elapsed() > REPLAN_AFTER
    {
        k.since = Instant::now();
        if let Err(e) = k.conn.clear_cached_statements().await {
            tracing::warn!(error = %e, "closing the post statement to re-plan it failed: reconnecting");
            if let Some(mut broken) = kept.take() {
                broken.conn.close_on_drop();
            }
        }
    }
    let conn = match kept {
        Some(kept) => &mut kept.conn,
        None => match connection(pool, &batch).await {
            Ok(conn) => {
                &mut kept
                    .insert(Kept {
                        conn,
                        since: Instant::now(),
                    })
                    .conn
            }
            Err(e) => return finish(batch, Err(e), counters),
        },
    };
    let rows = match tokio::time::timeout(STATEMENT_WAIT, run_statement(conn, &batch)).await {
        Ok(rows) => rows,
        // No answer (e.g. a silent network drop): the outcome is unknown, so 503 (a client
        // retries with its clientMessageId).
        Err(_) => Err(sqlx::Error::PoolTimedOut),
    };
    // Only a statement the server refused leaves the connection in a known state.
    if let Err(e) = &rows
        && !matches!(e, sqlx::Error::Database(_))
        && let Some(mut broken) = kept.take()
    {
        broken.conn.close_on_drop();
    }
    finish(batch, rows, counters);
}

/// The connection, within the wait left to the batch's oldest post.
async fn connection(
    pool: &PgPool,
    batch: &[Pending],
) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, sqlx::Error> {
    let oldest = batch.iter().map(|p| p.queued).min().unwrap_or_else(Instant::now);
    match tokio::time::timeout_at((oldest + CONNECTION_WAIT).into(), pool.acquire()).await {
        Ok(acquired) => acquired,
        Err(_) => Err(sqlx::Error::PoolTimedOut),
    }
}

async fn run_statement(conn: &mut sqlx::PgConnection, batch: &[Pending]) -> Result<Vec<Written>, sqlx::Error> {
    let posts: Vec<&Post> = batch.iter().map(|p| p.post.as_ref()).collect();
    write_postgres(conn, &posts).await
}

/// Answers each post of the batch.
fn finish(batch: Vec<Pending>, rows: Result<Vec<Written>, sqlx::Error>, counters: &Counters) {
    let n = batch.len();
    counters.batches.fetch_add(1, Ordering::Relaxed);
    counters.posts.fetch_add(n as u64, Ordering::Relaxed);
    match rows {
        Ok(rows) => {
            // One row per post, in order (`write_postgres` checks the count).
            for (p, written) in batch.into_iter().zip(rows) {
                let _ = p.reply.send(Ok(Some(written)));
            }
        }
        Err(e) if crate::error::is_connection_error(&e) => {
            let error = format!("posting a batch: {e}");
            for p in batch {
                let _ = p.reply.send(Err(DomainError::Unavailable(error.clone())));
            }
        }
        // Not a database error: the statement may have committed before it failed (a decode or
        // protocol error), so posting again could store twice. 503: clients retry with their
        // clientMessageId.
        Err(e) if !matches!(e, sqlx::Error::Database(_)) => {
            tracing::warn!(error = %e, posts = n, "a post batch failed with an unknown outcome");
            let error = format!("posting a batch: {e}");
            for p in batch {
                let _ = p.reply.send(Err(DomainError::Unavailable(error.clone())));
            }
        }
        // The server refused the statement and rolled it back.
        Err(e) => {
            tracing::debug!(error = %e, posts = n, "a post batch failed: its posts go one by one");
            counters.retried.fetch_add(n as u64, Ordering::Relaxed);
            for p in batch {
                let _ = p.reply.send(Ok(None));
            }
        }
    }
}
