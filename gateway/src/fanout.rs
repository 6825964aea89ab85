//! Fan-out: every envelope the bus delivers goes to the local sockets that should see it,
//! and only to them. Messages of a group leave in seq order with no gap: one that arrives
//! early (two API pods racing) is held briefly, and what is missing is fetched from the store.
//!
//! Each group's ordering starts from the group's `last_seq` read just before the gateway
//! subscribes to it ([`crate::seeds::Seeds`]) and ends when it unsubscribes; so the first message a gateway
//! sees of a group is never taken as the start of the sequence. After the bus reconnects (or
//! the fan-out fell behind it), the tail of every group is read again and what the bus missed
//! is fetched from the store.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use tracing::Instrument;

use community_chat_shared::{
    bus::{Envelope, Event, Target, Topic},
    domain::model::Message,
    telemetry,
};
use serde_json::value::RawValue;
use socketioxide::{SendError, SocketError, extract::SocketRef};
use tokio::sync::{broadcast, mpsc};

use crate::{
    Gateway, rooms,
    seeds::{Control, GroupKey, read_tails},
    session::{Gate, Session},
};

/// Most messages held per group while waiting for a missing seq.
const MAX_HELD: usize = 1_000;
/// Largest gap fetched from the store and sent to the room. A larger one is skipped: the
/// sockets see the jump in seq and catch up themselves (`syncGroups`), paced by their own acks,
/// instead of a burst that would overflow their queues.
const MAX_GAP_FILL: i64 = 100;

/// Per-group ordering state, from subscribe to unsubscribe.
struct Sequencer {
    /// Last seq sent to the room.
    last: i64,
    /// Highest seq known to be committed (from the store's tail), to fetch up to.
    tail: i64,
    /// Messages that arrived ahead of `last + 1`.
    held: BTreeMap<i64, Message>,
    /// When the oldest held message arrived.
    held_since: Option<Instant>,
    /// A store fetch for the gap is under way.
    fetching: bool,
}

impl Sequencer {
    fn starting_after(last: i64) -> Self {
        Self {
            last,
            tail: last,
            held: BTreeMap::new(),
            held_since: None,
            fetching: false,
        }
    }
}

/// The result of a gap fetch, back to the fan-out task.
struct Filled {
    key: GroupKey,
    messages: Result<Vec<Message>, String>,
}

pub(crate) async fn run(
    gateway: Arc<Gateway>,
    mut deliveries: broadcast::Receiver<Arc<Envelope>>,
    mut control: mpsc::UnboundedReceiver<Control>,
    reconnections: Option<broadcast::Receiver<()>>,
) {
    let (fill_tx, mut fill_rx) = mpsc::channel::<Filled>(1024);
    let (tails_tx, tails_rx) = mpsc::unbounded_channel::<Control>();
    let mut tails_rx = tails_rx;
    let mut sequencers: HashMap<GroupKey, Sequencer> = HashMap::new();
    let gap_delay = Duration::from_millis(gateway.limits.gap_fill_delay_ms);
    let mut tick = tokio::time::interval(Duration::from_millis(
        gap_delay.as_millis().clamp(10, 1000) as u64 / 2 + 5,
    ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (has_reconnections, mut reconnections) = match reconnections {
        Some(r) => (true, r),
        None => (false, broadcast::channel(1).1),
    };
    loop {
        gateway
            .metrics
            .group_rooms
            .store(sequencers.len() as i64, Ordering::Relaxed);
        gateway
            .metrics
            .bus_queue
            .store(deliveries.len() as i64, Ordering::Relaxed);
        tokio::select! {
            // Seeds are sent before the bus subscribes, so they are always taken before the
            // first delivery of their group.
            biased;
            Some(message) = control.recv() => apply_control(&gateway, &mut sequencers, message, &fill_tx),
            Some(message) = tails_rx.recv() => apply_control(&gateway, &mut sequencers, message, &fill_tx),
            Some(filled) = fill_rx.recv() => {
                if let Some(state) = sequencers.get_mut(&filled.key) {
                    apply_fill(&gateway, &filled.key, state, filled.messages);
                }
            }
            received = deliveries.recv() => match received {
                Ok(envelope) => {
                    gateway.metrics.events_in.fetch_add(1, Ordering::Relaxed);
                    let span = tracing::info_span!("fan_out", event = envelope.event.name(), org = %envelope.topic.org);
                    if let Some(trace) = &envelope.trace {
                        telemetry::set_parent_from(&span, trace.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                    }
                    dispatch(&gateway, &mut sequencers, &envelope).instrument(span).await;
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    gateway.metrics.events_lagged.fetch_add(missed, Ordering::Relaxed);
                    tracing::warn!(missed, "fan-out fell behind the bus; fetching what it skipped");
                    refresh_tails(&gateway, &sequencers, &tails_tx);
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            reconnected = reconnections.recv(), if has_reconnections => match reconnected {
                Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    tracing::info!(groups = sequencers.len(), "bus reconnected; fetching what it missed");
                    refresh_tails(&gateway, &sequencers, &tails_tx);
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = tick.tick() => {
                let now = Instant::now();
                let held: usize = sequencers.values().map(|s| s.held.len()).sum();
                gateway.metrics.held_messages.store(held as i64, Ordering::Relaxed);
                for (key, state) in sequencers.iter_mut() {
                    let waited = state.held_since.is_some_and(|t| now.duration_since(t) >= gap_delay);
                    // A known tail not reached yet (a fill stopped at a held message that was
                    // then released): fetch the rest.
                    let behind_tail = state.held.is_empty() && state.tail > state.last;
                    if !state.fetching && (waited || behind_tail || state.held.len() >= MAX_HELD) {
                        start_fill(&gateway, key.clone(), state, fill_tx.clone());
                    }
                }
            }
        }
    }
    tracing::info!("fan-out stopped: the bus closed");
}

fn apply_control(
    gateway: &Arc<Gateway>,
    sequencers: &mut HashMap<GroupKey, Sequencer>,
    message: Control,
    fill_tx: &mpsc::Sender<Filled>,
) {
    match message {
        Control::Seed(seeds) => {
            for (key, seq) in seeds {
                match sequencers.get_mut(&key) {
                    // Started by a message before the seed came (the store read failed
                    // earlier, or a stray delivery): the seed only moves it forward.
                    Some(state) if state.last < seq => {
                        state.last = seq;
                        state.tail = state.tail.max(seq);
                        release_held(gateway, &key, state);
                    }
                    Some(_) => {}
                    None => {
                        sequencers.insert(key, Sequencer::starting_after(seq));
                    }
                }
            }
        }
        Control::Forget(keys) => {
            for key in keys {
                sequencers.remove(&key);
            }
        }
        Control::Tails(tails) => {
            for (key, seq) in tails {
                if let Some(state) = sequencers.get_mut(&key)
                    && seq > state.last
                {
                    state.tail = state.tail.max(seq);
                    if !state.fetching {
                        start_fill(gateway, key, state, fill_tx.clone());
                    }
                }
            }
        }
    }
}

/// Reads the store's tail of every group in order, in the background; the answer comes back
/// as [`Control::Tails`].
fn refresh_tails(gateway: &Gateway, sequencers: &HashMap<GroupKey, Sequencer>, tails: &mpsc::UnboundedSender<Control>) {
    if sequencers.is_empty() {
        return;
    }
    let keys: Vec<GroupKey> = sequencers.keys().cloned().collect();
    let store = gateway.service.store().clone();
    let tails = tails.clone();
    tokio::spawn(async move {
        let read = read_tails(&store, keys.into_iter()).await;
        if tails.send(Control::Tails(read)).is_err() {
            tracing::debug!("fan-out ended before the tails were read");
        }
    });
}

async fn dispatch(gateway: &Arc<Gateway>, sequencers: &mut HashMap<GroupKey, Sequencer>, envelope: &Envelope) {
    let Topic { org, target } = &envelope.topic;
    match (target, &envelope.event) {
        (Target::Group(group), Event::NewGroupMessage(message)) => {
            let key = (org.clone(), *group);
            let state = match sequencers.entry(key.clone()) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    // Not subscribed by this gateway (the in-process bus delivers everything),
                    // or its seed could not be read: with nobody here, nothing to do; else the
                    // sequence starts at this message.
                    if gateway.namespace_sockets(&rooms::group(org, *group)).is_empty() {
                        return;
                    }
                    e.insert(Sequencer::starting_after(message.seq - 1))
                }
            };
            if message.seq <= state.last {
                gateway.metrics.duplicates_dropped.fetch_add(1, Ordering::Relaxed);
            } else if message.seq == state.last + 1 {
                send_message(gateway, &key, message);
                state.last = message.seq;
                release_held(gateway, &key, state);
            } else {
                state.held.insert(message.seq, message.clone());
                state.held_since.get_or_insert_with(Instant::now);
            }
        }
        (Target::Group(group), Event::GroupTyping { from, .. }) => {
            let room = rooms::group(org, *group);
            emit_to_room(gateway, &room, &envelope.event, |s| s.caller.email != *from);
        }
        (Target::Group(group), Event::GroupDeleted { .. }) => {
            let room = rooms::group(org, *group);
            emit_to_room(gateway, &room, &envelope.event, |_| true);
            let sockets = gateway.namespace_sockets(&room);
            let mut released = 0;
            for socket in sockets {
                socket.leave(room.clone());
                if let Some(session) = session_of(&socket) {
                    session.forget_cursor(*group);
                    if session.remove_group(*group) {
                        released += 1;
                    }
                }
            }
            release_times(gateway, Topic::group(org, *group), released).await;
            sequencers.remove(&(org.clone(), *group));
        }
        (Target::Group(group), _) => {
            emit_to_room(gateway, &rooms::group(org, *group), &envelope.event, |_| true);
        }
        (Target::User(email), Event::AddedToGroup { group }) => {
            let user_room = rooms::user(org, email);
            let group_room = rooms::group(org, group.id);
            let mut joined = 0;
            for socket in gateway.namespace_sockets(&user_room) {
                if session_of(&socket).is_some_and(|s| !s.add_groups([group.id]).is_empty()) {
                    socket.join(group_room.clone());
                    joined += 1;
                }
            }
            if joined > 0 {
                let topics = vec![Topic::group(org, group.id); joined];
                gateway.subscriptions.acquire(topics).await;
            }
            emit_to_room(gateway, &user_room, &envelope.event, |_| true);
        }
        (Target::User(email), Event::RemovedFromGroup { group_id }) => {
            let user_room = rooms::user(org, email);
            let group_room = rooms::group(org, *group_id);
            let mut left = 0;
            for socket in gateway.namespace_sockets(&user_room) {
                socket.leave(group_room.clone());
                if let Some(session) = session_of(&socket) {
                    session.forget_cursor(*group_id);
                    if session.remove_group(*group_id) {
                        left += 1;
                    }
                }
            }
            release_times(gateway, Topic::group(org, *group_id), left).await;
            emit_to_room(gateway, &user_room, &envelope.event, |_| true);
        }
        (Target::User(email), _) => {
            emit_to_room(gateway, &rooms::user(org, email), &envelope.event, |_| true);
        }
    }
}

async fn release_times(gateway: &Gateway, topic: Topic, times: usize) {
    if times > 0 {
        gateway.subscriptions.release(vec![topic; times]).await;
    }
}

pub(crate) fn session_of(socket: &SocketRef) -> Option<Arc<Session>> {
    socket.extensions.get::<Arc<Session>>()
}

/// Sends a message to its room: each socket gets it once, in seq order, after any catch-up of
/// that group it is running.
fn send_message(gateway: &Gateway, key: &GroupKey, message: &Message) {
    let room = rooms::group(&key.0, key.1);
    let sockets = gateway.namespace_sockets(&room);
    if !sockets.is_empty() {
        match serde_json::value::to_raw_value(message) {
            Ok(payload) => {
                let payload: Arc<RawValue> = Arc::from(payload);
                for socket in sockets {
                    let Some(session) = session_of(&socket) else { continue };
                    if let Gate::Send = session.gate_live(key.1, message.seq, &payload) {
                        emit_one(gateway, socket, "newGroupMessage", &payload);
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot serialise a message"),
        }
    }
    let age = (chrono::Utc::now() - message.created_at).to_std().unwrap_or_default();
    gateway.metrics.fanout_latency.observe(age);
    gateway.metrics.fanout_messages.fetch_add(1, Ordering::Relaxed);
}

/// Sends held messages that are now in order.
fn release_held(gateway: &Gateway, key: &GroupKey, state: &mut Sequencer) {
    while let Some(entry) = state.held.first_entry() {
        let seq = *entry.key();
        if seq <= state.last {
            entry.remove();
            gateway.metrics.duplicates_dropped.fetch_add(1, Ordering::Relaxed);
        } else if seq == state.last + 1 {
            let message = entry.remove();
            send_message(gateway, key, &message);
            state.last = seq;
        } else {
            break;
        }
    }
    state.held_since = if state.held.is_empty() {
        None
    } else {
        Some(Instant::now())
    };
}

/// Fetches what is missing between the last seq sent and the first held message (or the known
/// tail). A gap over [`MAX_GAP_FILL`] is skipped instead: clients see it and catch up.
fn start_fill(gateway: &Arc<Gateway>, key: GroupKey, state: &mut Sequencer, results: mpsc::Sender<Filled>) {
    let target = match state.held.keys().next() {
        Some(first_held) => *first_held,
        None => state.tail + 1,
    };
    let missing = target - state.last - 1;
    if missing <= 0 {
        release_held(gateway, &key, state);
        return;
    }
    if missing > MAX_GAP_FILL {
        gateway.metrics.gaps_skipped.fetch_add(1, Ordering::Relaxed);
        tracing::info!(group = %key.1, missing, "gap too large to fill; clients catch up by seq");
        state.last = target - 1;
        release_held(gateway, &key, state);
        return;
    }
    state.fetching = true;
    let after = state.last;
    let store = gateway.service.store().clone();
    gateway.metrics.gap_fills.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        let messages = store
            .messages_after(&key.0, key.1, after, missing as u64)
            .await
            .map_err(|e| e.to_string());
        if results.send(Filled { key, messages }).await.is_err() {
            tracing::debug!("fan-out ended before a gap fill returned");
        }
    });
}

fn apply_fill(gateway: &Gateway, key: &GroupKey, state: &mut Sequencer, fetched: Result<Vec<Message>, String>) {
    state.fetching = false;
    match fetched {
        Ok(messages) => {
            let before = state.last;
            for message in messages {
                if message.seq == state.last + 1 {
                    send_message(gateway, key, &message);
                    state.last = message.seq;
                }
            }
            if state.last == before {
                // The store had nothing after `last`: the tail read was ahead of it; stop.
                state.tail = state.last;
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "gap fill from the store failed; clients catch up by seq");
            // Not retried on a timer while the store fails: the next message retries.
            state.tail = state.last;
        }
    }
    // Whatever is still missing cannot be waited for forever: skip ahead; clients see the
    // gap in seq and catch up themselves.
    if let Some(first) = state.held.keys().next().copied()
        && first > state.last + 1
    {
        gateway.metrics.gaps_skipped.fetch_add(1, Ordering::Relaxed);
        state.last = first - 1;
    }
    release_held(gateway, key, state);
}

/// Serialises the event once and emits it to each local socket of `room` that `include`
/// accepts. A socket whose queue is full is a slow client: it is disconnected.
fn emit_to_room(gateway: &Gateway, room: &str, event: &Event, include: impl Fn(&Session) -> bool) {
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
