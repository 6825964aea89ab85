//! The handshake: authenticate, join the rooms of all the caller's groups and subscribe to
//! them, register the event handlers, all before socket.io sends `connect`: nothing published
//! after the client sees `connect` can miss it.

use std::sync::{Arc, atomic::Ordering};

use community_chat_shared::{
    bus::Topic,
    error::DomainError,
    ids::{GroupId, OrgId},
};
use serde_json::Value;
use socketioxide::extract::{SocketRef, State, TryData};

use crate::{Gateway, catch_up, events, rooms, session::Session};

/// Why a handshake was refused; its text is the `connect_error` message the client sees.
#[derive(Debug)]
pub struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<DomainError> for Refused {
    fn from(e: DomainError) -> Self {
        if e.is_server_error() {
            tracing::error!(error = %e, "handshake failed");
        }
        Refused(e.public_message())
    }
}

/// The connect middleware. `auth: { token, orgId }`.
pub async fn handshake(
    socket: SocketRef,
    TryData(auth): TryData<Value>,
    State(gateway): State<Arc<Gateway>>,
) -> Result<(), Refused> {
    let auth = auth.unwrap_or(Value::Null);
    let field = |name: &str| {
        auth.get(name)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    let token = field("token").ok_or_else(|| Refused("missing token: pass auth: { token, orgId }".into()))?;
    let token = token.strip_prefix("Bearer ").unwrap_or(token);
    let org = field("orgId").ok_or_else(|| Refused("missing orgId: pass auth: { token, orgId }".into()))?;
    let org = OrgId::parse(org)?;
    let caller = gateway.auth.verify(token, &org)?;
    let sync = match auth.get("sync") {
        None | Some(Value::Null) => Vec::new(),
        Some(value) => catch_up::parse_groups(value).map_err(|e| Refused(format!("invalid sync: {e}")))?,
    };
    // Concurrent handshakes share one query on Postgres (no need to wait for a turn at the
    // database); elsewhere each one waits its turn.
    let groups = if gateway.service.coalesces_group_lookups() {
        gateway.service.my_group_ids(&caller).await?
    } else {
        gateway.admitted(gateway.service.my_group_ids(&caller)).await?
    };

    let session = Arc::new(Session::new(caller, gateway.limits.socket_sends_per_second));
    session.add_groups(groups.iter().copied());
    let mut room_names: Vec<String> = groups.iter().map(|g| rooms::group(session.org(), *g)).collect();
    room_names.push(rooms::user(session.org(), &session.caller.email));
    let mut topics: Vec<Topic> = groups.iter().map(|g| Topic::group(session.org(), *g)).collect();
    topics.push(Topic::user(session.org(), &session.caller.email));

    // Live messages of the groups to catch up are held from before `connect`.
    catch_up::begin(&session, &sync);
    socket.extensions.insert(PendingSync(Arc::new(sync)));
    socket.extensions.insert(session.clone());
    events::register(&socket);
    socket.on_disconnect(disconnected);
    socket.join(room_names);
    gateway.subscriptions.acquire(topics).await;
    gateway.metrics.sockets.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(sid = %socket.id, org = %session.org(), groups = groups.len(), "socket connected");
    Ok(())
}

/// The `sync` of the handshake, run once `connect` has been sent.
#[derive(Clone)]
struct PendingSync(Arc<Vec<(GroupId, i64)>>);

/// After `connect`: runs the handshake's catch-up, if any, and tells the client with a
/// `groupsSynced { groups }` event when it is done.
pub async fn connected(socket: SocketRef, State(gateway): State<Arc<Gateway>>) {
    let Some(PendingSync(sync)) = socket.extensions.remove::<PendingSync>() else {
        return;
    };
    let Some(session) = socket.extensions.get::<Arc<Session>>() else {
        return;
    };
    if sync.is_empty() {
        return;
    }
    let summaries = catch_up::run(&gateway, &socket, &session, &sync).await;
    if let Err(e) = socket.emit("groupsSynced", &serde_json::json!({ "groups": summaries })) {
        tracing::debug!(error = %e, "could not send groupsSynced");
    }
}

async fn disconnected(socket: SocketRef, State(gateway): State<Arc<Gateway>>) {
    if let Some(session) = socket.extensions.get::<Arc<Session>>() {
        gateway.subscriptions.release(session.take_all_topics()).await;
        gateway.metrics.sockets.fetch_sub(1, Ordering::Relaxed);
    }
}
