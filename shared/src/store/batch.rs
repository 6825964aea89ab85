//! Group commit for posts on Postgres: members' posts that arrive while earlier ones are being
//! written are stored together, by one statement in one transaction, so a burst of N posts
//! costs one round trip, one commit and one WAL flush instead of N. Nothing waits for a batch
//! to fill: a post that finds a free slot goes out at once (alone, when nothing else is
//! queued), so a quiet service keeps its latency; under load, what queued behind the slots in
//! flight makes the next batch.
//!
//! The statement keeps every guarantee of the one-row post: each message checks membership and
//! `replyTo` on its own, seqs stay gap-free per group (the groups of a batch are locked in key
//! order, so two batches cannot deadlock, and each group's row is written once per batch), and
//! a batch commits or fails whole. A row that does not apply (not a member, bad `replyTo`) is
//! left out and its caller takes the checked path. Two posts with the same `clientMessageId`
//! never share a batch, and a retry of a send already stored is left out of the statement (its
//! caller answers the replay). When the server refuses a batch (e.g. a retry racing on another
//! pod hits the unique index, or a group row stays locked past `lock_timeout`), its posts are
//! retried one by one, which sorts out who was first. A lost connection, or a failure after
//! which the outcome is unknown, answers 503.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use sea_orm::sqlx::{
    self, PgPool, Postgres,
    pool::PoolConnection,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio::sync::{mpsc, oneshot};

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

/// What the batch did with one post.
#[derive(Debug)]
pub(crate) enum BatchOutcome {
    /// Stored with this seq.
    Stored(i64),
    /// Not stored: not a member, no such group, or `replyTo` not in the group.
    NotApplied,
    /// The batch failed (not for a lost connection): post this one on its own.
    Retry,
}

struct Pending {
    message: Message,
    attachments: String,
    /// When the post asked; it waits at most [`CONNECTION_WAIT`] from here for a connection.
    queued: Instant,
    reply: oneshot::Sender<Result<BatchOutcome, DomainError>>,
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

    pub(crate) async fn post(&self, message: &Message) -> Result<BatchOutcome, DomainError> {
        let attachments = serde_json::to_string(&message.attachments)
            .map_err(|e| DomainError::Internal(format!("attachments: {e}")))?;
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            message: message.clone(),
            attachments,
            queued: Instant::now(),
            reply,
        };
        match tokio::time::timeout(CONNECTION_WAIT, self.tx.send(pending)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Ok(BatchOutcome::Retry),
            Err(_) => {
                return Err(DomainError::Unavailable(
                    "posts are queued beyond the wait for the database".into(),
                ));
            }
        }
        // A dropped sender means the task went away mid-batch: post on its own.
        answer.await.unwrap_or(Ok(BatchOutcome::Retry))
    }
}

async fn run(pool: PgPool, mut rx: mpsc::Receiver<Pending>, max_batch: usize, counters: Arc<Counters>) {
    // The connection is kept from batch to batch: returned to the pool, sqlx would ping it
    // each time (a round trip per batch). It is let go after a failure other than the
    // server refusing a statement.
    let mut conn: Option<PoolConnection<Postgres>> = None;
    // Posts set aside because a post with the same clientMessageId was in the batch before.
    let mut held: Vec<Pending> = Vec::new();
    loop {
        let mut batch = Vec::with_capacity(max_batch.min(64));
        let mut keys = HashSet::new();
        let mut take = |pending: Pending, batch: &mut Vec<Pending>, held: &mut Vec<Pending>| {
            let repeated = idempotency_key(&pending.message).is_some_and(|key| !keys.insert(key));
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

/// A post on its own: membership, `replyTo`, not a stored `clientMessageId` (else nothing is
/// written and the caller answers the replay), the group's next seq and the insert. The
/// parameters are those of [`BATCH_SQL`], one value each. (`replyTo` is looked up by id alone:
/// compared with the group inside the look-up, a generic plan may scan the group's messages.)
pub(crate) const SINGLE_SQL: &str = "WITH member AS (
        SELECT 1 FROM group_members WHERE org_id = $1 AND group_id = $2 AND email = $3
    ), bumped AS (
        UPDATE groups SET last_seq = last_seq + 1
        WHERE org_id = $1 AND id = $2 AND EXISTS (SELECT 1 FROM member)
          AND ($8::uuid IS NULL OR (SELECT group_id FROM messages WHERE org_id = $1 AND id = $8) = $2)
          AND ($9::text IS NULL OR NOT EXISTS (SELECT 1 FROM messages
                WHERE org_id = $1 AND group_id = $2 AND sender = $3 AND client_message_id = $9))
        RETURNING last_seq
    )
    INSERT INTO messages (org_id, group_id, seq, id, sender, content, content_type, attachments,
                          reply_to, client_message_id, created_at)
    SELECT $1, $2, last_seq, $4, $3, $5, $6, $7, $8, $9, $10 FROM bumped
    RETURNING id, seq";

/// Membership, `replyTo`, seqs and the insert of every post of the batch, in one autocommit
/// statement. The groups are locked in key order first (`FOR UPDATE`, which also returns each
/// one's latest `last_seq`); each post that applies takes the next seq of its group in arrival
/// order; each group's `last_seq` is then written once.
const BATCH_SQL: &str = "WITH input AS MATERIALIZED (
        SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::uuid[], $5::text[], $6::text[],
                             $7::text[], $8::uuid[], $9::text[], $10::timestamptz[])
            WITH ORDINALITY AS t(org_id, group_id, sender, id, content, content_type, attachments,
                                 reply_to, client_message_id, created_at, ord)
    ), locked AS MATERIALIZED (
        SELECT g.org_id, g.id, g.last_seq FROM groups g
        WHERE (g.org_id, g.id) IN (SELECT org_id, group_id FROM input)
        ORDER BY g.org_id, g.id
        FOR UPDATE OF g
    ), ok AS MATERIALIZED (
        SELECT i.*, l.last_seq + row_number() OVER (PARTITION BY i.org_id, i.group_id ORDER BY i.ord) AS seq
        FROM input i JOIN locked l ON l.org_id = i.org_id AND l.id = i.group_id
        WHERE EXISTS (SELECT 1 FROM group_members m
                      WHERE m.org_id = i.org_id AND m.group_id = i.group_id AND m.email = i.sender)
          AND (i.reply_to IS NULL OR (SELECT r.group_id FROM messages r
                      WHERE r.org_id = i.org_id AND r.id = i.reply_to) = i.group_id)
          -- A retry of a stored send is left out (its caller answers the replay), instead of
          -- failing the batch on the unique index.
          AND (i.client_message_id IS NULL OR NOT EXISTS (SELECT 1 FROM messages d
                      WHERE d.org_id = i.org_id AND d.group_id = i.group_id AND d.sender = i.sender
                        AND d.client_message_id = i.client_message_id))
    ), bumped AS (
        UPDATE groups g SET last_seq = c.top
        FROM (SELECT org_id, group_id, max(seq) AS top FROM ok GROUP BY org_id, group_id) c
        WHERE g.org_id = c.org_id AND g.id = c.group_id
    )
    INSERT INTO messages (org_id, group_id, seq, id, sender, content, content_type, attachments,
                          reply_to, client_message_id, created_at)
    SELECT org_id, group_id, seq, id, sender, content, content_type, attachments, reply_to,
           client_message_id, created_at
    FROM ok
    RETURNING id, seq";

async fn write(pool: &PgPool, kept: &mut Option<PoolConnection<Postgres>>, batch: Vec<Pending>, counters: &Counters) {
    let conn = match kept {
        Some(conn) => conn,
        None => match connection(pool, &batch).await {
            Ok(conn) => kept.insert(conn),
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
        broken.close_on_drop();
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

async fn run_statement(
    conn: &mut sqlx::PgConnection,
    batch: &[Pending],
) -> Result<Vec<(uuid::Uuid, i64)>, sqlx::Error> {
    match batch {
        [one] => Ok(insert_one(&mut *conn, &one.message, &one.attachments)
            .await?
            .map(|seq| vec![(one.message.id.0, seq)])
            .unwrap_or_default()),
        many => {
            let column = |f: &dyn Fn(&Pending) -> &str| many.iter().map(f).collect::<Vec<_>>();
            sqlx::query_as(BATCH_SQL)
                .bind(column(&|p| p.message.org_id.as_str()))
                .bind(many.iter().map(|p| p.message.group_id.0).collect::<Vec<_>>())
                .bind(column(&|p| p.message.from.as_str()))
                .bind(many.iter().map(|p| p.message.id.0).collect::<Vec<_>>())
                .bind(column(&|p| p.message.content.as_str()))
                .bind(column(&|p| p.message.content_type.as_str()))
                .bind(column(&|p| p.attachments.as_str()))
                .bind(many.iter().map(|p| p.message.reply_to.map(|r| r.0)).collect::<Vec<_>>())
                .bind(
                    many.iter()
                        .map(|p| p.message.client_message_id.as_deref())
                        .collect::<Vec<_>>(),
                )
                .bind(many.iter().map(|p| p.message.created_at).collect::<Vec<_>>())
                .fetch_all(&mut *conn)
                .await
        }
    }
}

/// Runs [`SINGLE_SQL`] for one post: `Some(seq)` when stored, `None` when it did not apply.
pub(crate) async fn insert_one<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    m: &Message,
    attachments: &str,
) -> Result<Option<i64>, sqlx::Error> {
    let row: Option<(uuid::Uuid, i64)> = sqlx::query_as(SINGLE_SQL)
        .bind(m.org_id.as_str())
        .bind(m.group_id.0)
        .bind(m.from.as_str())
        .bind(m.id.0)
        .bind(m.content.as_str())
        .bind(m.content_type.as_str())
        .bind(attachments)
        .bind(m.reply_to.map(|r| r.0))
        .bind(m.client_message_id.as_deref())
        .bind(m.created_at)
        .fetch_optional(executor)
        .await?;
    Ok(row.map(|(_, seq)| seq))
}

/// Answers each post of the batch.
fn finish(batch: Vec<Pending>, rows: Result<Vec<(uuid::Uuid, i64)>, sqlx::Error>, counters: &Counters) {
    let n = batch.len();
    counters.batches.fetch_add(1, Ordering::Relaxed);
    counters.posts.fetch_add(n as u64, Ordering::Relaxed);
    match rows {
        Ok(rows) => {
            for p in batch {
                let outcome = match rows.iter().find(|(id, _)| *id == p.message.id.0) {
                    Some((_, seq)) => BatchOutcome::Stored(*seq),
                    None => BatchOutcome::NotApplied,
                };
                let _ = p.reply.send(Ok(outcome));
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
                let _ = p.reply.send(Ok(BatchOutcome::Retry));
            }
        }
    }
}
