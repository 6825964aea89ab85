//! Socket answers, in one place: acks `{ ok: true, data }` / `{ ok: false, error }`, and the
//! `exception` event when the client asked for no ack (DESIGN.md, Socket.IO).

use std::convert::Infallible;
use std::sync::Arc;

use community_chat_shared::error::DomainError;
use serde::Serialize;
use serde_json::{Value, json};
use socketioxide::{
    adapter::{Adapter, LocalAdapter},
    extract::{AckSender, SocketRef},
    handler::FromMessageParts,
    socket::Socket,
};

/// Whether the client passed an ack callback with the event.
pub struct WantsAck(pub bool);

impl<A: Adapter> FromMessageParts<A> for WantsAck {
    type Error = Infallible;
    fn from_message_parts(
        _: &Arc<Socket<A>>,
        _: &mut socketioxide::handler::Value,
        ack_id: &Option<i64>,
    ) -> Result<Self, Infallible> {
        Ok(Self(ack_id.is_some()))
    }
}

/// Answers an event: success goes to the ack (if any); an error goes to the ack, or else to an
/// `exception` event naming the event.
pub fn answer<T: Serialize>(
    socket: &SocketRef<LocalAdapter>,
    ack: AckSender,
    wants_ack: bool,
    event: &str,
    result: Result<T, DomainError>,
    extra: Option<(&str, Value)>,
) {
    let sent = match result {
        Ok(data) => {
            let mut body = json!({ "ok": true, "data": data });
            if let Some((key, value)) = extra {
                body[key] = value;
            }
            ack.send(&body)
        }
        Err(error) => {
            if error.is_server_error() {
                tracing::error!(error = %error, event, "socket event failed");
            } else {
                tracing::debug!(error = %error, event, "socket event rejected");
            }
            let (status, message) = (error.status_code(), error.public_message());
            if wants_ack {
                ack.send(&json!({ "ok": false, "error": { "statusCode": status, "message": message } }))
            } else {
                socket.emit(
                    "exception",
                    &json!({ "status": "error", "statusCode": status, "message": message, "event": event }),
                )
            }
        }
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, event, "could not answer a socket event");
    }
}
