//! Which group rooms each local socket is in, and the bus subscriptions that go with them. A
//! socket in a group's room holds one count of the group's topic ([`crate::Subscriptions`]):
//! taken when it enters the room, given back when it leaves, whichever way that happens.
//!
//! A socket enters a group room only once the domain has made it a member, and the gateway
//! relies on that for live messages, catch-up reads and typing (the rule table of
//! `community_chat_shared::domain::MessageLog`):
//!
//! | Enters | after | Leaves |
//! |---|---|---|
//! | handshake (`connection`) | `ChatService::my_group_ids` | disconnect |
//! | `joinGroup` ([`join`]) | `ChatService::require_member` | `leaveGroup` ([`leave`]) |
//! | `addedToGroup` ([`added_to_group`]) | the domain added the member | `removedFromGroup`, `groupDeleted` |

use community_chat_shared::{
    bus::{Event, Topic},
    ids::{Email, GroupId, OrgId},
};
use socketioxide::extract::SocketRef;

use crate::{
    Gateway,
    emit::{emit_to_room, session_of},
    rooms,
    session::Session,
};

/// `joinGroup`, once the domain said the caller is a member: enters the room unless already in.
pub(crate) async fn join(gateway: &Gateway, socket: &SocketRef, session: &Session, group: GroupId) {
    if !session.add_groups([group]).is_empty() {
        socket.join(rooms::group(session.org(), group));
        gateway
            .subscriptions
            .acquire(vec![Topic::group(session.org(), group)])
            .await;
    }
}

/// `leaveGroup`: leaves the room if in it.
pub(crate) async fn leave(gateway: &Gateway, socket: &SocketRef, session: &Session, group: GroupId) {
    if session.remove_group(group) {
        socket.leave(rooms::group(session.org(), group));
        gateway
            .subscriptions
            .release(vec![Topic::group(session.org(), group)])
            .await;
    }
}

/// The user was added to a group: their local sockets enter its room and are subscribed
/// before they are told (`event`), so nothing published after they see it can miss them.
pub(crate) async fn added_to_group(gateway: &Gateway, org: &OrgId, email: &Email, group: GroupId, event: &Event) {
    let user_room = rooms::user(org, email);
    let group_room = rooms::group(org, group);
    let mut joined = 0;
    for socket in gateway.namespace_sockets(&user_room) {
        if session_of(&socket).is_some_and(|s| !s.add_groups([group]).is_empty()) {
            socket.join(group_room.clone());
            joined += 1;
        }
    }
    if joined > 0 {
        let topics = vec![Topic::group(org, group); joined];
        gateway.subscriptions.acquire(topics).await;
    }
    emit_to_room(gateway, &user_room, event, |_| true);
}

/// The user was removed from a group: their local sockets leave its room, then are told.
pub(crate) async fn removed_from_group(gateway: &Gateway, org: &OrgId, email: &Email, group: GroupId, event: &Event) {
    let user_room = rooms::user(org, email);
    let left = leave_everyone(gateway, &user_room, org, group);
    release_times(gateway, Topic::group(org, group), left).await;
    emit_to_room(gateway, &user_room, event, |_| true);
}

/// The group was deleted: its sockets are told, then leave its room.
pub(crate) async fn group_deleted(gateway: &Gateway, org: &OrgId, group: GroupId, event: &Event) {
    let room = rooms::group(org, group);
    emit_to_room(gateway, &room, event, |_| true);
    let left = leave_everyone(gateway, &room, org, group);
    release_times(gateway, Topic::group(org, group), left).await;
}

/// Takes every socket of `room` out of the group's room and forgets where it stood in the
/// group; returns how many were in it (the subscription counts to give back).
fn leave_everyone(gateway: &Gateway, room: &str, org: &OrgId, group: GroupId) -> usize {
    let group_room = rooms::group(org, group);
    let mut left = 0;
    for socket in gateway.namespace_sockets(room) {
        socket.leave(group_room.clone());
        if let Some(session) = session_of(&socket) {
            session.forget_cursor(group);
            if session.remove_group(group) {
                left += 1;
            }
        }
    }
    left
}

async fn release_times(gateway: &Gateway, topic: Topic, times: usize) {
    if times > 0 {
        gateway.subscriptions.release(vec![topic; times]).await;
    }
}
