//! Coalesced membership look-ups on Postgres: the socket handshakes that ask "which groups is
//! this user in?" at the same time share one query. A reconnect storm or a connect burst
//! otherwise costs one Postgres round trip per handshake, which `perf` showed as ~20% of a
//! gateway's CPU per connect (BENCHMARKS.md). A look-up that finds nothing in flight goes out
//! at once; the ones that arrive while queries run go together in the next.

use std::{collections::HashMap, sync::Arc};

use sea_orm::sqlx::{self, PgPool};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::{
    error::DomainError,
    ids::{Email, GroupId, OrgId},
};

/// Queries in flight at once per process.
const IN_FLIGHT: usize = 2;
/// Most look-ups per query.
const MAX_BATCH: usize = 512;
/// Look-ups waiting before callers feel back-pressure.
const QUEUE: usize = 8192;

type Reply = oneshot::Sender<Result<Vec<GroupId>, DomainError>>;

/// Handle to the look-up task of one process.
#[derive(Clone)]
pub(crate) struct MembershipLookups {
    tx: mpsc::Sender<(OrgId, Email, Reply)>,
}

impl MembershipLookups {
    /// Starts the task on the store's pool; it ends when the last handle is dropped.
    pub(crate) fn start(pool: PgPool) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(pool, rx));
        Self { tx }
    }

    /// The ids of the groups `email` is a member of in `org`.
    pub(crate) async fn group_ids_of(&self, org: &OrgId, email: &Email) -> Result<Vec<GroupId>, DomainError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((org.clone(), email.clone(), reply))
            .await
            .map_err(|_| DomainError::Internal("membership look-ups stopped".into()))?;
        answer
            .await
            .unwrap_or_else(|_| Err(DomainError::Internal("membership look-up dropped".into())))
    }
}

async fn run(pool: PgPool, mut rx: mpsc::Receiver<(OrgId, Email, Reply)>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            answer(&pool, batch).await;
            drop(slot);
        });
    }
}

/// One row per membership of the asked users, tagged with the position of the asking one.
const SQL: &str = "SELECT i.ord, m.group_id
    FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS i(org_id, email, ord)
    JOIN group_members m ON m.org_id = i.org_id AND m.email = i.email";

async fn answer(pool: &PgPool, batch: Vec<(OrgId, Email, Reply)>) {
    let orgs: Vec<&str> = batch.iter().map(|(org, _, _)| org.as_str()).collect();
    let emails: Vec<&str> = batch.iter().map(|(_, email, _)| email.as_str()).collect();
    let rows: Result<Vec<(i64, uuid::Uuid)>, sqlx::Error> =
        sqlx::query_as(SQL).bind(orgs).bind(emails).fetch_all(pool).await;
    match rows {
        Ok(rows) => {
            let mut groups: HashMap<i64, Vec<GroupId>> = HashMap::new();
            for (ord, group) in rows {
                groups.entry(ord).or_default().push(GroupId(group));
            }
            for (i, (_, _, reply)) in batch.into_iter().enumerate() {
                // WITH ORDINALITY counts from 1.
                let _ = reply.send(Ok(groups.remove(&(i as i64 + 1)).unwrap_or_default()));
            }
        }
        Err(e) => {
            let error = DomainError::from(e);
            for (_, _, reply) in batch {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}
