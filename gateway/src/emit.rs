//! Emits to local sockets, in one place: an event serialised once per room, and the rule for a
//! socket that cannot keep up (its queue is full: it is disconnected and catches up by seq).

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use community_chat_shared::bus::Event;
use serde_json::value::RawValue;
use socketioxide::{SendError, SocketError, extract::SocketRef};

use crate::{Gateway, session::Session};

/// The gateway's state of a socket (none before the handshake registered it).
pub(crate) fn session_of(socket: &SocketRef) -> Option<Arc<Session>> {
    socket.extensions.get::<Arc<Session>>()
}

/// Serialises the event once and emits it to each local socket of `room` that `include`
/// accepts.
pub(crate) fn emit_to_room(gateway: &Gateway, room: &str, event: &Event, include: impl Fn(&Session) -> bool) {
    let sockets = gateway.namespace_sockets(room);
    if sockets.is_empty() {
        return;
    }
    let payload = match event_payload(event) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "cannot serialise an event");
            return;
        }
    };
    let name = event.name();
    for socket in sockets {
        if session_of(&socket).is_some_and(|s| include(&s)) {
            emit_one(gateway, socket, name, &payload);
        }
    }
}

/// Emits to one socket; a full queue marks a slow client, which is disconnected.
pub(crate) fn emit_one(gateway: &Gateway, socket: SocketRef, name: &str, payload: &RawValue) {
    match socket.emit(name, payload) {
        Ok(()) => {
            gateway.metrics.events_out.fetch_add(1, Ordering::Relaxed);
        }
        Err(SendError::Socket(SocketError::InternalChannelFull)) => disconnect_slow_client(gateway, socket),
        Err(e) => tracing::debug!(error = %e, "emit to a closing socket failed"),
    }
}

/// The event's data as raw JSON, serialised once for the whole room.
fn event_payload(event: &Event) -> Result<Box<RawValue>, serde_json::Error> {
    match event {
        Event::NewGroupMessage(message) => serde_json::value::to_raw_value(message),
        other => {
            let value = serde_json::to_value(other)?;
            serde_json::value::to_raw_value(&value["data"])
        }
    }
}

/// The client's queue is full: it cannot keep up, and memory must stay bounded. It is told to
/// go (it reconnects and catches up by seq); the disconnect packet itself needs queue room, so
/// it is retried for a few seconds, after which the ping timeout closes the connection anyway.
fn disconnect_slow_client(gateway: &Gateway, socket: SocketRef) {
    gateway
        .metrics
        .slow_clients_disconnected
        .fetch_add(1, Ordering::Relaxed);
    tracing::info!(sid = %socket.id, "disconnecting a slow client (queue full)");
    tokio::spawn(async move {
        for _ in 0..50 {
            match socket.clone().disconnect() {
                Err(SocketError::InternalChannelFull) => tokio::time::sleep(Duration::from_millis(100)).await,
                _ => return,
            }
        }
    });
}
