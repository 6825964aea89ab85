//! The wire protocol: the Socket.IO packet prefixes of the `/community-chat` namespace, the
//! borrowed serde views of the events the bench reads, and the due time a bench message carries.
//!
//! Wire protocol (WebSocket transport only, text frames):
//! - server `0{"sid":..,"pingInterval":..}` (Engine.IO open)
//! - client `40/community-chat,{"token":..,"orgId":..,"sync":[..]}` (Socket.IO CONNECT with auth)
//! - server `40/community-chat,{"sid":..}` (connected) or `44/community-chat,{"message":..}`
//! - server `2` (ping), client `3` (pong)
//! - server `42/community-chat,["newGroupMessage",{..}]` (events)

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;

pub(super) const NAMESPACE_CONNECT: &str = "40/community-chat,";
pub(super) const NAMESPACE_ERROR: &str = "44/community-chat,";
pub(super) const NAMESPACE_EVENT: &str = "42/community-chat,";
pub(super) const NAMESPACE_DISCONNECT: &str = "41/community-chat";
pub(super) const NAMESPACE_ACK: &str = "43/community-chat,";

pub(super) type Ws = WebSocketStream<TcpStream>;

#[derive(Deserialize)]
pub(super) struct EventFrame<'a>(
    #[serde(borrow)] pub(super) Cow<'a, str>,
    #[serde(borrow)] pub(super) &'a RawValue,
);

#[derive(Deserialize)]
pub(super) struct MessageView<'a> {
    #[serde(rename = "groupId", borrow)]
    pub(super) group_id: Cow<'a, str>,
    pub(super) seq: i64,
    #[serde(borrow)]
    pub(super) content: Cow<'a, str>,
}

/// The due time a bench message carries in its content (`b:<n>:<due_us>`).
pub fn due_us(content: &str) -> Option<u64> {
    content.strip_prefix("b:")?.split(':').nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_time_from_content() {
        assert_eq!(due_us("b:12:3456"), Some(3456));
        assert_eq!(due_us("hello"), None);
        assert_eq!(due_us("b:1"), None);
    }

    #[test]
    fn event_frames_parse_borrowed() {
        let frame =
            r#"["newGroupMessage",{"id":"x","groupId":"g","seq":3,"from":"a@b.c","content":"b:1:2","createdAt":"t"}]"#;
        let EventFrame(name, data) = serde_json::from_str(frame).unwrap();
        assert_eq!(name, "newGroupMessage");
        let m: MessageView = serde_json::from_str(data.get()).unwrap();
        assert_eq!((m.group_id.as_ref(), m.seq, due_us(&m.content)), ("g", 3, Some(2)));
    }
}
