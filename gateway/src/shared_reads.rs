//! Catch-up reads shared between the sockets that ask for the same group at the same time.
//!
//! After a gateway dies, its clients reconnect to the others at once, each syncing its groups:
//! without sharing, a group of N members costs N reads of nearly the same messages, queued at
//! the database. Here the requests for one group wait together while that group's previous read
//! runs, and the next read, from the lowest `afterSeq` among them, serves them all.
//!
//! What makes sharing safe (no gap at the seam): a read only serves requests that were waiting
//! before it started. Each request comes after its socket began holding the group's live
//! messages (`Session::begin_catch_up`), so every message committed before the read started is
//! in the read, and every message committed after it reaches the socket live and is held.
//!
//! Who may read: the reads go to the domain's `MessageLog`, which checks nobody, so a request
//! must show that its socket is in the group's room ([`InRoom`]), which only a member's socket
//! can be.

use std::{collections::HashMap, sync::Arc};

use community_chat_shared::{
    domain::model::Message,
    error::DomainError,
    ids::{GroupId, OrgId},
};
use tokio::sync::oneshot;

use crate::{Gateway, session::InRoom};

/// One read's messages, oldest first, and whether the group has more after them.
#[derive(Debug)]
pub struct Page {
    pub messages: Vec<Message>,
    pub has_more: bool,
}

type Reply = oneshot::Sender<Result<Arc<Page>, DomainError>>;
/// The requests waiting for a group's next read: each one's `afterSeq` and where to answer.
type Waiting = Vec<(i64, Reply)>;

/// The waiting requests of each group being read.
#[derive(Default)]
pub struct SharedReads {
    groups: std::sync::Mutex<HashMap<(OrgId, GroupId), Waiting>>,
}

impl SharedReads {
    /// Up to `page` messages of the member's group after `after`, from a read that started
    /// after this call.
    pub async fn after(
        gateway: &Arc<Gateway>,
        member: InRoom<'_>,
        after: i64,
        page: u64,
    ) -> Result<Arc<Page>, DomainError> {
        let (reply, answer) = oneshot::channel();
        let key = (member.org().clone(), member.group());
        let lead = {
            let mut groups = gateway.shared_reads.groups.lock().unwrap_or_else(|e| e.into_inner());
            match groups.get_mut(&key) {
                // A read of this group is running: wait for the next one.
                Some(waiting) => {
                    waiting.push((after, reply));
                    false
                }
                None => {
                    groups.insert(key.clone(), vec![(after, reply)]);
                    true
                }
            }
        };
        if lead {
            // Its own task: the reads go on for the others if this socket goes away.
            tokio::spawn(read_while_asked(gateway.clone(), key, page));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(DomainError::Internal("shared catch-up read dropped".into())))
    }
}

/// If the reading task ends without removing its entry (a panic, or a runtime shutting
/// down), the entry goes and its waiters are answered, so later syncs of the group do not wait
/// on a reader that is gone.
struct Abandoned<'a> {
    gateway: &'a Gateway,
    key: &'a (OrgId, GroupId),
    done: bool,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let waiting = {
            let mut groups = self
                .gateway
                .shared_reads
                .groups
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            groups.remove(self.key).unwrap_or_default()
        };
        for (_, reply) in waiting {
            let _ = reply.send(Err(DomainError::Internal("shared catch-up read abandoned".into())));
        }
    }
}

/// Reads the group for whoever is waiting, until nobody is.
async fn read_while_asked(gateway: Arc<Gateway>, key: (OrgId, GroupId), page: u64) {
    let mut guard = Abandoned {
        gateway: &gateway,
        key: &key,
        done: false,
    };
    read_loop(&gateway, &key, page).await;
    guard.done = true;
}

async fn read_loop(gateway: &Arc<Gateway>, key: &(OrgId, GroupId), page: u64) {
    loop {
        let waiting = {
            let mut groups = gateway.shared_reads.groups.lock().unwrap_or_else(|e| e.into_inner());
            let Some(entry) = groups.get_mut(key) else {
                return;
            };
            if entry.is_empty() {
                groups.remove(key);
                return;
            }
            // Those taken now were all waiting before the read below starts; later ones wait
            // for the next read.
            std::mem::take(entry)
        };
        let from = waiting.iter().map(|(after, _)| *after).min().unwrap_or(0);
        let read = gateway
            .admitted(gateway.message_log.messages_after(&key.0, key.1, from, page + 1))
            .await
            .map(|mut messages| {
                let has_more = messages.len() as u64 > page;
                messages.truncate(page as usize);
                Arc::new(Page { messages, has_more })
            });
        for (_, reply) in waiting {
            let _ = reply.send(read.clone());
        }
    }
}
