//! The fan-out's control channel: what the subscription task and the tail reads tell the
//! fan-out's ordering ([`Control`], per [`GroupKey`]), and the store reads behind it. The
//! subscription task sends, the fan-out receives, and neither module depends on the other.
//!
//! A group's ordering starts from its `last_seq`, read just before the gateway subscribes to it
//! ([`ControlSender::seed`]), and ends when it unsubscribes ([`ControlSender::forget`]). The
//! same tail reads serve the fan-out after the bus may have missed events.
//!
//! The channel is unbounded so that the subscription task never waits on the fan-out. The
//! fan-out does wait on the subscription task (an added member is subscribed before the client
//! is told), so waits run one way only and cannot deadlock. The one producer sends one message
//! per batch of subscription requests, and the fan-out reads it before every delivery.

use std::collections::HashMap;

use community_chat_shared::{
    bus::{Target, Topic},
    domain::MessageLog,
    ids::{GroupId, OrgId},
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

/// The subscription task's end of the channel: reads where groups stand and sends it.
#[derive(Clone)]
pub(crate) struct ControlSender {
    log: MessageLog,
    control: mpsc::UnboundedSender<Control>,
}

/// A control channel; the receiver goes to the fan-out.
pub(crate) fn channel(log: MessageLog) -> (ControlSender, mpsc::UnboundedReceiver<Control>) {
    let (control, receiver) = mpsc::unbounded_channel();
    (ControlSender { log, control }, receiver)
}

impl ControlSender {
    /// Reads where each group of `topics` stands and tells the fan-out, before the bus is asked
    /// to subscribe. If the store does not answer, the fan-out starts the group at the first
    /// message it sees (and gap fills cannot work then either).
    pub(crate) async fn seed(&self, topics: &[Topic]) {
        let seeds = read_tails(&self.log, group_keys(topics)).await;
        if !seeds.is_empty() && self.control.send(Control::Seed(seeds)).is_err() {
            tracing::debug!("fan-out has ended; seeds dropped");
        }
    }

    /// Re-reads the tails of these groups, whose subscription came late (a retried subscribe):
    /// the fan-out fetches what was committed meanwhile.
    pub(crate) async fn refresh(&self, topics: &[Topic]) {
        let tails = read_tails(&self.log, group_keys(topics)).await;
        if !tails.is_empty() && self.control.send(Control::Tails(tails)).is_err() {
            tracing::debug!("fan-out has ended; tails dropped");
        }
    }

    /// Unsubscribed: the fan-out drops these groups' ordering.
    pub(crate) fn forget(&self, topics: &[Topic]) {
        let keys: Vec<GroupKey> = group_keys(topics).collect();
        if !keys.is_empty() && self.control.send(Control::Forget(keys)).is_err() {
            tracing::debug!("fan-out has ended; forget dropped");
        }
    }
}

fn group_keys(topics: &[Topic]) -> impl Iterator<Item = GroupKey> + '_ {
    topics.iter().filter_map(|t| match t.target {
        Target::Group(g) => Some((t.org.clone(), g)),
        Target::User(_) => None,
    })
}

/// The store's last seq of each group, a query per org and chunk. Groups the store could not
/// answer for are left out (logged).
pub(crate) async fn read_tails(log: &MessageLog, keys: impl Iterator<Item = GroupKey>) -> Vec<(GroupKey, i64)> {
    let mut by_org: HashMap<OrgId, Vec<GroupId>> = HashMap::new();
    for (org, group) in keys {
        by_org.entry(org).or_default().push(group);
    }
    let mut out = Vec::new();
    for (org, groups) in by_org {
        for chunk in groups.chunks(TAIL_CHUNK) {
            match log.last_seqs(&org, chunk).await {
                Ok(rows) => out.extend(rows.into_iter().map(|(g, seq)| ((org.clone(), g), seq))),
                Err(e) => tracing::warn!(error = %e, groups = chunk.len(), "cannot read group tails"),
            }
        }
    }
    out
}
