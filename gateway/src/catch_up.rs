//! Catch-up over the socket: `syncGroups { groups: [{ groupId, afterSeq }] }` (or `sync` in the
//! handshake `auth`) sends every message after `afterSeq` from the store, in order, as
//! `newGroupMessage`, then lets the live stream of that group continue with no duplicate and no
//! gap at the seam: live messages that arrive meanwhile are held by the socket's session and
//! sent after, skipping any seq already sent.

use std::sync::Arc;

use community_chat_shared::{domain::model::HistoryCursor, error::DomainError, ids::GroupId};
use serde_json::{Value, json};
use socketioxide::extract::SocketRef;

use crate::{Gateway, emit::emit_one, session::Session, shared_reads::SharedReads};

/// Most groups in one sync request.
pub const MAX_GROUPS: usize = 500;
/// Most messages sent per group per sync; beyond, the answer says `hasMore` and the client
/// syncs again from the last seq it got.
pub const MAX_MESSAGES_PER_GROUP: usize = 1_000;
const PAGE: u64 = 200;

/// Parses `[{ groupId, afterSeq }]`.
pub fn parse_groups(value: &Value) -> Result<Vec<(GroupId, i64)>, DomainError> {
    let Some(items) = value.as_array() else {
        return Err(DomainError::invalid("groups must be an array of { groupId, afterSeq }"));
    };
    if items.len() > MAX_GROUPS {
        return Err(DomainError::invalid(format!("at most {MAX_GROUPS} groups per sync")));
    }
    items
        .iter()
        .map(|item| {
            let group = item
                .get("groupId")
                .and_then(Value::as_str)
                .ok_or_else(|| DomainError::invalid("each group needs a string groupId"))?;
            let after = match item.get("afterSeq") {
                None | Some(Value::Null) => 0,
                Some(v) => v
                    .as_i64()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| DomainError::invalid("afterSeq must be an integer of 0 or more"))?,
            };
            Ok((GroupId::parse(group)?, after))
        })
        .collect()
}

/// Holds live messages of these groups until [`run`] has sent what was missed.
pub fn begin(session: &Session, groups: &[(GroupId, i64)]) {
    for (group, after) in groups {
        session.begin_catch_up(*group, *after);
    }
}

/// Sends what each group missed, then the live messages held meanwhile. Returns one summary
/// per group: `{ groupId, delivered, lastSeq, hasMore }` or `{ groupId, error }`.
pub async fn run(
    gateway: &Arc<Gateway>,
    socket: &SocketRef,
    session: &Arc<Session>,
    groups: &[(GroupId, i64)],
) -> Vec<Value> {
    let mut summaries = Vec::with_capacity(groups.len());
    for (group, after) in groups {
        let outcome = send_missed(gateway, socket, session, *group, *after).await;
        // Always release what was held, even when the catch-up failed.
        for payload in session.end_catch_up(*group) {
            emit_one(gateway, socket.clone(), "newGroupMessage", &payload);
        }
        summaries.push(match outcome {
            Ok((delivered, last_seq, has_more)) => {
                json!({ "groupId": group, "delivered": delivered, "lastSeq": last_seq, "hasMore": has_more })
            }
            Err(e) => {
                json!({ "groupId": group, "error": { "statusCode": e.status_code(), "message": e.public_message() } })
            }
        });
    }
    summaries
}

async fn send_missed(
    gateway: &Arc<Gateway>,
    socket: &SocketRef,
    session: &Session,
    group: GroupId,
    after: i64,
) -> Result<(usize, i64, bool), DomainError> {
    let (mut cursor, mut delivered) = (after, 0usize);
    // Sends one message unless the socket has it; true when sent.
    let send = |message: &community_chat_shared::domain::model::Message| -> Result<bool, DomainError> {
        if message.seq <= after || !session.gate_caught_up(group, message.seq) {
            return Ok(false);
        }
        let payload = serde_json::value::to_raw_value(message).map_err(|e| DomainError::Internal(e.to_string()))?;
        emit_one(gateway, socket.clone(), "newGroupMessage", &payload);
        Ok(true)
    };
    // A socket in the group's room gets its first page from a read shared with the other
    // sockets syncing this group now; the rest, and everything for a socket not in the room,
    // through the domain's history, which checks the caller.
    if let Some(member) = session.in_room(group) {
        let page = SharedReads::after(gateway, member, after, PAGE).await?;
        for message in &page.messages {
            delivered += usize::from(send(message)?);
            cursor = cursor.max(message.seq);
        }
        if !page.has_more {
            return Ok((delivered, cursor, false));
        }
    }
    loop {
        let page = gateway
            .admitted(
                gateway
                    .service
                    .history(&session.caller, group, HistoryCursor::AfterSeq(cursor), Some(PAGE)),
            )
            .await?;
        for message in &page.data {
            delivered += usize::from(send(message)?);
            cursor = cursor.max(message.seq);
        }
        if !page.has_more {
            return Ok((delivered, cursor, false));
        }
        if delivered >= MAX_MESSAGES_PER_GROUP {
            return Ok((delivered, cursor, true));
        }
    }
}
