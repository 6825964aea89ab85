//! What the transports may use of the store and the bus beyond the domain's operations, each
//! as a narrow capability rather than the store or the bus itself:
//!
//! - [`MessageLog`]: reads of committed messages by seq, for a gateway that orders and catches
//!   up the groups its sockets are in;
//! - [`EventFeed`]: a gateway's side of the bus: which topics it receives, and what arrives;
//! - [`ChatService::publish_typing`]: typing, relayed and never stored;
//! - [`ChatService::ping_store`], [`ChatService::ping_bus`]: readiness.
//!
//! Membership is the rule the log's reads rely on without checking it again. It is checked once
//! per socket and group, where the socket enters the group's room: at the handshake
//! ([`ChatService::my_group_ids`]), on `joinGroup` ([`ChatService::require_member`]), or on the
//! `addedToGroup` event the domain publishes once a member is added.
//!
//! | Rule | Checked in | Relied on by |
//! |---|---|---|
//! | Only members read a group's messages, live or caught up | the room entries above | [`MessageLog`] |
//! | Only members send a group typing events | the room entries above | [`ChatService::publish_typing`] |
//!
//! Not on every read: a catch-up or a keystroke that cost a membership query each would put the
//! database on the hot path of every reconnect storm. A caller with no such standing reads
//! through [`ChatService::history`], which checks.

use std::sync::Arc;

use tokio::sync::broadcast;

use super::{ChatService, model::Message};
use crate::{
    auth::Caller,
    bus::{Bus, Envelope, Event, Topic},
    error::DomainError,
    ids::{GroupId, OrgId},
    store::Store,
};

/// Committed messages by seq, with no authorization of its own. A gateway holds one to order
/// the groups of its local sockets, fill what the bus dropped and serve catch-ups; it reads a
/// group only for sockets the domain made members of it (see the module's rule table).
#[derive(Clone)]
pub struct MessageLog {
    /// The one store; only the two seq reads below are reachable through this type.
    store: Store,
}

impl MessageLog {
    /// The last seq of each of these groups of `org`, in one query. Groups that do not exist
    /// are absent.
    pub async fn last_seqs(&self, org: &OrgId, groups: &[GroupId]) -> Result<Vec<(GroupId, i64)>, DomainError> {
        self.store.last_seqs(org, groups).await
    }

    /// Up to `limit` messages of `group` with seq above `after`, oldest first.
    pub async fn messages_after(
        &self,
        org: &OrgId,
        group: GroupId,
        after: i64,
        limit: u64,
    ) -> Result<Vec<Message>, DomainError> {
        self.store.messages_after(org, group, after, limit).await
    }
}

/// A gateway's side of the event bus: it chooses the topics it receives and reads what arrives.
/// Publishing is not part of it: events are published by the domain, after their write.
#[derive(Clone)]
pub struct EventFeed {
    /// The one bus; only its receiving side is reachable through this type.
    bus: Arc<dyn Bus>,
}

impl EventFeed {
    /// Starts receiving these topics on [`EventFeed::deliveries`].
    pub async fn subscribe(&self, topics: &[Topic]) -> Result<(), DomainError> {
        self.bus.subscribe(topics).await
    }

    /// Stops receiving these topics.
    pub async fn unsubscribe(&self, topics: &[Topic]) -> Result<(), DomainError> {
        self.bus.unsubscribe(topics).await
    }

    /// Every envelope on a subscribed topic.
    pub fn deliveries(&self) -> broadcast::Receiver<Arc<Envelope>> {
        self.bus.deliveries()
    }

    /// Fires after the bus reconnected (what was published meanwhile was missed); `None`
    /// when the bus never disconnects.
    pub fn reconnections(&self) -> Option<broadcast::Receiver<()>> {
        self.bus.reconnections()
    }
}

impl ChatService {
    /// The gateway's read capability on committed messages.
    pub fn message_log(&self) -> MessageLog {
        MessageLog {
            store: self.store().clone(),
        }
    }

    /// The gateway's receiving side of the bus.
    pub fn event_feed(&self) -> EventFeed {
        EventFeed {
            bus: self.bus().clone(),
        }
    }

    /// Relays that `caller` is (or stopped) typing in `group` to the group's sockets, except
    /// the caller's own. Nothing is stored. The caller's membership is the transport's to have
    /// established (module rule table); an error means the bus did not take the event.
    pub async fn publish_typing(&self, caller: &Caller, group: GroupId, typing: bool) -> Result<(), DomainError> {
        let envelope = Envelope::new(
            Topic::group(&caller.org, group),
            Event::GroupTyping {
                group_id: group,
                from: caller.email.clone(),
                typing,
            },
        );
        self.bus().publish(envelope).await
    }

    /// Whether concurrent [`ChatService::my_group_ids`] calls share queries (Postgres), so a
    /// transport need not ration them.
    pub fn coalesces_group_lookups(&self) -> bool {
        self.store().coalesces_lookups()
    }

    /// Most database connections this process opens; transports ration their reads against it.
    pub fn database_connections(&self) -> u32 {
        self.store().pool_stats().max
    }

    /// Whether the database answers, for readiness.
    pub async fn ping_store(&self) -> Result<(), DomainError> {
        self.store().ping().await
    }

    /// Whether the bus's backend answers, for readiness.
    pub async fn ping_bus(&self) -> Result<(), DomainError> {
        self.bus().ping().await
    }
}
