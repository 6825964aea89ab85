//! Where each group's sequence starts, for the fan-out: the subscription task reads a group's
//! `last_seq` from the store just before it subscribes ([`Seeds::seed`]) and tells the fan-out,
//! which orders that group's messages from there until the unsubscribe ([`Seeds::forget`]).
//! The same tail reads serve the fan-out after the bus may have missed events.
//!
//! The control channel is unbounded on purpose: its one producer is the subscription task, one
//! message per batch, and the fan-out itself waits on that task when a member is added (a bound
//! could deadlock the two). The fan-out reads it before every delivery.

use std::collections::HashMap;

use community_chat_shared::{
    bus::{Target, Topic},
    ids::{GroupId, OrgId},
    store::Store,
};
use tokio::sync::mpsc;

/// Most groups in one tail query.
const TAIL_CHUNK: usize = 1_000;

/// A group of an org: the key of the fan-out's per-group state.
pub(crate) type GroupKey = (OrgId, GroupId);

/// What the subscription task and tail reads tell the fan-out.
pub(crate) enum Control {
    /// About to subscribe: each group's sequence continues after this seq.
    Seed(Vec<(GroupKey, i64)>),
    /// Unsubscribed: these groups' state goes.
    Forget(Vec<GroupKey>),
    /// The store's last seq of these groups, read after the bus may have missed events.
    Tails(Vec<(GroupKey, i64)>),
}

/// The subscription task's handle on the fan-out's ordering state.
#[derive(Clone)]
pub(crate) struct Seeds {
    store: Store,
    control: mpsc::UnboundedSender<Control>,
}

impl Seeds {
    pub(crate) fn new(store: Store) -> (Self, mpsc::UnboundedReceiver<Control>) {
        let (control, receiver) = mpsc::unbounded_channel();
        (Self { store, control }, receiver)
    }

    /// Reads where each group of `topics` stands and tells the fan-out, before the bus is asked
    /// to subscribe. If the store does not answer, the fan-out starts the group at the first
    /// message it sees (and gap fills cannot work then either).
    pub(crate) async fn seed(&self, topics: &[Topic]) {
        let seeds = read_tails(&self.store, group_keys(topics)).await;
        if !seeds.is_empty() && self.control.send(Control::Seed(seeds)).is_err() {
            tracing::debug!("fan-out has ended; seeds dropped");
        }
    }

    /// Re-reads the tails of these groups, whose subscription came late (a retried subscribe):
    /// the fan-out fetches what was committed meanwhile.
    pub(crate) async fn refresh(&self, topics: &[Topic]) {
        let tails = read_tails(&self.store, group_keys(topics)).await;
        if !tails.is_empty() && self.control.send(Control::Tails(tails)).is_err() {
            tracing::debug!("fan-out has ended; tails dropped");
        }
    }

    pub(crate) fn forget(&self, topics: &[Topic]) {
        let keys: Vec<GroupKey> = group_keys(topics).collect();
        if !keys.is_empty() && self.control.send(Control::Forget(keys)).is_err() {
            tracing::debug!("fan-out has ended; forget dropped");
        }
    }
}

pub(crate) fn group_keys(topics: &[Topic]) -> impl Iterator<Item = GroupKey> + '_ {
    topics.iter().filter_map(|t| match t.target {
        Target::Group(g) => Some((t.org.clone(), g)),
        Target::User(_) => None,
    })
}

/// The store's last seq of each group, a query per org and chunk. Groups the store could not
/// answer for are left out (logged).
pub(crate) async fn read_tails(store: &Store, keys: impl Iterator<Item = GroupKey>) -> Vec<(GroupKey, i64)> {
    let mut by_org: HashMap<OrgId, Vec<GroupId>> = HashMap::new();
    for (org, group) in keys {
        by_org.entry(org).or_default().push(group);
    }
    let mut out = Vec::new();
    for (org, groups) in by_org {
        for chunk in groups.chunks(TAIL_CHUNK) {
            match store.last_seqs(&org, chunk).await {
                Ok(rows) => out.extend(rows.into_iter().map(|(g, seq)| ((org.clone(), g), seq))),
                Err(e) => tracing::warn!(error = %e, groups = chunk.len(), "cannot read group tails"),
            }
        }
    }
    out
}
