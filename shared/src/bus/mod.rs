//! The event bus: how a write on one pod reaches the sockets on every gateway.
//!
//! Writers publish an [`Envelope`] on a [`Topic`] after their transaction commits. Gateways
//! subscribe to the topics their local sockets need and receive envelopes on
//! [`Bus::deliveries`]. Two implementations: [`InProcessBus`] (standalone `serve`: one
//! process, nothing to subscribe to) and the Redis bus (scaled mode, the gateway issue).
//! The bus may drop events; clients never lose a message because each carries its group's
//! `seq` and can be caught up from the store.

mod in_process;
mod redis;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

pub use in_process::InProcessBus;
pub use redis::RedisBus;

use crate::{
    domain::model::{Group, Member, Message},
    error::DomainError,
    ids::{Email, GroupId, OrgId},
};

/// Where an event goes: a group's room, or one user's sockets.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind", content = "id")]
pub enum Target {
    Group(GroupId),
    User(Email),
}

/// A channel on the bus: an org and a target. Its Redis name is
/// `{prefix}:{orgId}:group:{groupId}` or `{prefix}:{orgId}:user:{email}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Topic {
    pub org: OrgId,
    pub target: Target,
}

impl Topic {
    pub fn group(org: &OrgId, group: GroupId) -> Self {
        Self {
            org: org.clone(),
            target: Target::Group(group),
        }
    }
    pub fn user(org: &OrgId, email: &Email) -> Self {
        Self {
            org: org.clone(),
            target: Target::User(email.clone()),
        }
    }
    pub fn channel_name(&self, prefix: &str) -> String {
        match &self.target {
            Target::Group(g) => format!("{prefix}:{}:group:{g}", self.org),
            Target::User(e) => format!("{prefix}:{}:user:{e}", self.org),
        }
    }
}

/// What happened. The variant name is the socket event name and the payload its data
/// (DESIGN.md, Socket.IO: server to client).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", content = "data", rename_all = "camelCase")]
pub enum Event {
    NewGroupMessage(Message),
    GroupUpdated {
        group: Group,
    },
    #[serde(rename_all = "camelCase")]
    GroupDeleted {
        group_id: GroupId,
    },
    #[serde(rename_all = "camelCase")]
    GroupMemberAdded {
        group_id: GroupId,
        member: Member,
    },
    #[serde(rename_all = "camelCase")]
    GroupMemberRemoved {
        group_id: GroupId,
        email: Email,
    },
    /// To the added user's own sockets: they join the room.
    AddedToGroup {
        group: Group,
    },
    /// To the removed user's own sockets: they leave the room.
    #[serde(rename_all = "camelCase")]
    RemovedFromGroup {
        group_id: GroupId,
    },
    /// A member is typing: to the other members' sockets, never the sender's.
    #[serde(rename_all = "camelCase")]
    GroupTyping {
        group_id: GroupId,
        from: Email,
        typing: bool,
    },
}

impl Event {
    /// The socket.io event name.
    pub fn name(&self) -> &'static str {
        match self {
            Event::NewGroupMessage(_) => "newGroupMessage",
            Event::GroupUpdated { .. } => "groupUpdated",
            Event::GroupDeleted { .. } => "groupDeleted",
            Event::GroupMemberAdded { .. } => "groupMemberAdded",
            Event::GroupMemberRemoved { .. } => "groupMemberRemoved",
            Event::AddedToGroup { .. } => "addedToGroup",
            Event::RemovedFromGroup { .. } => "removedFromGroup",
            Event::GroupTyping { .. } => "groupTyping",
        }
    }
}

/// One event on one topic, as it travels between pods.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub topic: Topic,
    #[serde(flatten)]
    pub event: Event,
    /// W3C trace context of the write that caused the event, so the gateway's fan-out joins
    /// its trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<std::collections::BTreeMap<String, String>>,
}

impl Envelope {
    /// An envelope carrying the current span's trace context.
    pub fn new(topic: Topic, event: Event) -> Self {
        Self {
            topic,
            event,
            trace: crate::telemetry::current_trace_context(),
        }
    }
}

#[async_trait::async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes after the write committed. An error is logged by the caller, never returned to
    /// the client: the write is durable and clients catch up by seq.
    async fn publish(&self, envelope: Envelope) -> Result<(), DomainError>;

    /// Starts receiving these topics on [`Bus::deliveries`] (gateways only).
    async fn subscribe(&self, topics: &[Topic]) -> Result<(), DomainError>;

    /// Stops receiving these topics.
    async fn unsubscribe(&self, topics: &[Topic]) -> Result<(), DomainError>;

    /// A receiver of every envelope on a subscribed topic.
    fn deliveries(&self) -> broadcast::Receiver<Arc<Envelope>>;

    /// Whether the bus's backend answers, for `/readyz`.
    async fn ping(&self) -> Result<(), DomainError>;

    /// Fires each time the bus has reconnected and subscribed again: events published while it
    /// was away were missed, and the gateway fetches them from the store. `None`: the bus never
    /// disconnects (in-process).
    fn reconnections(&self) -> Option<broadcast::Receiver<()>> {
        None
    }
}
