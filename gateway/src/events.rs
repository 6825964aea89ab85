//! Client-to-server events: parse, call one domain function, answer (DESIGN.md, Socket.IO).

use std::{sync::Arc, time::Duration};

use tracing::Instrument;

use community_chat_shared::{domain::model::PostMessage, error::DomainError, ids::GroupId};
use serde_json::{Value, json};
use socketioxide::extract::{AckSender, Event as EventName, SocketRef, State, TryData};

use crate::{
    Gateway, catch_up,
    reply::{WantsAck, answer},
    room_membership,
    session::Session,
};

pub fn register(socket: &SocketRef) {
    socket.on("sendGroupMessage", send_group_message);
    socket.on("joinGroup", join_group);
    socket.on("leaveGroup", leave_group);
    socket.on("groupTyping", group_typing);
    socket.on("syncGroups", sync_groups);
    socket.on_fallback(unknown_event);
}

fn session(socket: &SocketRef) -> Result<Arc<Session>, DomainError> {
    socket
        .extensions
        .get::<Arc<Session>>()
        .ok_or_else(|| DomainError::Unauthenticated("socket is not authenticated".into()))
}

/// The payload as a JSON object, and its `groupId`.
fn object_with_group(
    payload: Result<Value, impl std::fmt::Display>,
) -> Result<(serde_json::Map<String, Value>, GroupId), DomainError> {
    let Ok(Value::Object(mut object)) = payload else {
        return Err(DomainError::invalid("payload must be a JSON object"));
    };
    let group = match object.remove("groupId") {
        Some(Value::String(id)) => GroupId::parse(&id)?,
        Some(_) => return Err(DomainError::invalid("groupId must be a string")),
        None => return Err(DomainError::invalid("groupId is required")),
    };
    Ok((object, group))
}

async fn send_group_message(
    socket: SocketRef,
    TryData(payload): TryData<Value>,
    ack: AckSender,
    WantsAck(wants_ack): WantsAck,
    State(gateway): State<Arc<Gateway>>,
) {
    let span = tracing::info_span!("socket_send_group_message", sid = %socket.id);
    let result = async {
        let session = session(&socket)?;
        let (body, group) = object_with_group(payload)?;
        if !session.try_send() {
            return Err(DomainError::RateLimited("too many messages: slow down".into()));
        }
        let input: PostMessage = serde_json::from_value(Value::Object(body))
            .map_err(|e| DomainError::invalid(format!("invalid message: {e}")))?;
        gateway.service.post_message(&session.caller, group, input).await
    }
    .instrument(span)
    .await;
    match result {
        Ok((message, replayed)) => answer(
            &socket,
            ack,
            wants_ack,
            "sendGroupMessage",
            Ok(message),
            Some(("replayed", json!(replayed))),
        ),
        Err(e) => answer::<()>(&socket, ack, wants_ack, "sendGroupMessage", Err(e), None),
    }
}

async fn join_group(
    socket: SocketRef,
    TryData(payload): TryData<Value>,
    ack: AckSender,
    WantsAck(wants_ack): WantsAck,
    State(gateway): State<Arc<Gateway>>,
) {
    let result = async {
        let session = session(&socket)?;
        let (_, group) = object_with_group(payload)?;
        gateway.service.require_member(&session.caller, group).await?;
        room_membership::join(&gateway, &socket, &session, group).await;
        Ok(json!({ "groupId": group }))
    }
    .await;
    answer(&socket, ack, wants_ack, "joinGroup", result, None);
}

async fn leave_group(
    socket: SocketRef,
    TryData(payload): TryData<Value>,
    ack: AckSender,
    WantsAck(wants_ack): WantsAck,
    State(gateway): State<Arc<Gateway>>,
) {
    let result = async {
        let session = session(&socket)?;
        let (_, group) = object_with_group(payload)?;
        room_membership::leave(&gateway, &socket, &session, group).await;
        Ok(json!({ "groupId": group }))
    }
    .await;
    answer(&socket, ack, wants_ack, "leaveGroup", result, None);
}

async fn group_typing(
    socket: SocketRef,
    TryData(payload): TryData<Value>,
    ack: AckSender,
    WantsAck(wants_ack): WantsAck,
    State(gateway): State<Arc<Gateway>>,
) {
    let result = async {
        let session = session(&socket)?;
        let (body, group) = object_with_group(payload)?;
        let typing = match body.get("typing") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(DomainError::invalid("typing must be a boolean")),
        };
        if !session.in_group(group) {
            return Err(DomainError::forbidden("join the group before sending typing events"));
        }
        let throttle = Duration::from_millis(gateway.limits.typing_throttle_ms);
        let relayed = session.should_relay_typing(group, typing, throttle);
        if relayed {
            gateway.service.publish_typing(&session.caller, group, typing).await?;
        }
        Ok(json!({ "groupId": group, "relayed": relayed }))
    }
    .await;
    answer(&socket, ack, wants_ack, "groupTyping", result, None);
}

/// `syncGroups { groups: [{ groupId, afterSeq }] }`: sends what was missed; the ack (after the
/// messages) summarises each group.
async fn sync_groups(
    socket: SocketRef,
    TryData(payload): TryData<Value>,
    ack: AckSender,
    WantsAck(wants_ack): WantsAck,
    State(gateway): State<Arc<Gateway>>,
) {
    let prepared = (|| {
        let session = session(&socket)?;
        let Ok(Value::Object(body)) = payload else {
            return Err(DomainError::invalid(
                "payload must be { groups: [{ groupId, afterSeq }] }",
            ));
        };
        let groups = catch_up::parse_groups(body.get("groups").unwrap_or(&Value::Null))?;
        Ok((session, groups))
    })();
    let result = match prepared {
        Ok((session, groups)) => {
            catch_up::begin(&session, &groups);
            let summaries = catch_up::run(&gateway, &socket, &session, &groups).await;
            Ok(json!({ "groups": summaries }))
        }
        Err(e) => Err(e),
    };
    answer(&socket, ack, wants_ack, "syncGroups", result, None);
}

async fn unknown_event(socket: SocketRef, EventName(name): EventName, ack: AckSender, WantsAck(wants_ack): WantsAck) {
    let error = DomainError::invalid(format!(
        "unknown event '{name}': use sendGroupMessage, joinGroup, leaveGroup, groupTyping or syncGroups"
    ));
    answer::<()>(&socket, ack, wants_ack, &name, Err(error), None);
}
