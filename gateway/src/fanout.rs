//! Fan-out: every envelope the bus delivers goes to the local sockets that should see it,
//! and only to them. Messages of a group leave in seq order with no gap; the order itself is
//! [`crate::sequencer`]'s, and this task is its shell: it feeds each group's [`Sequencer`] the
//! deliveries, the store's answers and the time, and sends what comes out.
//!
//! Each group's ordering starts from the group's `last_seq` read just before the gateway
//! subscribes to it ([`Control::Seed`]) and ends when it unsubscribes ([`Control::Forget`]);
//! so the first message a gateway sees of a group is never taken as the start of the sequence.
//! After the bus reconnects (or the fan-out fell behind it), the tail of every group is read
//! again and what the bus missed is fetched from the store ([`Control::Tails`]). Membership
//! events move sockets between rooms ([`crate::room_membership`]).

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use tracing::Instrument;

use community_chat_shared::{
    bus::{Envelope, Event, Target, Topic},
    domain::model::Message,
    error::DomainError,
    telemetry,
};
use serde_json::value::RawValue;
use tokio::sync::{broadcast, mpsc};

use crate::{
    Gateway,
    control::{Control, GroupKey, read_tails},
    emit::{emit_one, emit_to_room, session_of},
    room_membership, rooms,
    sequencer::{Gap, Released, Sequencer},
    session::Gate,
};

/// The result of a gap fetch, back to the fan-out task.
struct Filled {
    key: GroupKey,
    messages: Result<Vec<Message>, DomainError>,
}

pub(crate) async fn run(
    gateway: Arc<Gateway>,
    mut deliveries: broadcast::Receiver<Arc<Envelope>>,
    mut control: mpsc::UnboundedReceiver<Control>,
    reconnections: Option<broadcast::Receiver<()>>,
) {
    let (fill_tx, mut fill_rx) = mpsc::channel::<Filled>(1024);
    let (tails_tx, mut tails_rx) = mpsc::unbounded_channel::<Control>();
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
                if let Some(sequencer) = sequencers.get_mut(&filled.key) {
                    let fetched = filled.messages.map_err(|e| {
                        tracing::warn!(error = %e, "gap fill from the store failed; clients catch up by seq");
                    });
                    let released = sequencer.apply_fill(fetched.ok(), Instant::now());
                    send_released(&gateway, &filled.key, released);
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
                let held: usize = sequencers.values().map(Sequencer::held).sum();
                gateway.metrics.held_messages.store(held as i64, Ordering::Relaxed);
                for (key, sequencer) in sequencers.iter_mut() {
                    if sequencer.fill_due(now, gap_delay) {
                        fill_gap(&gateway, key, sequencer, &fill_tx);
                    }
                }
            }
        }
    }
    tracing::info!("fan-out stopped: the bus closed");
}

fn apply_control(
    gateway: &Gateway,
    sequencers: &mut HashMap<GroupKey, Sequencer>,
    message: Control,
    fill_tx: &mpsc::Sender<Filled>,
) {
    match message {
        Control::Seed(seeds) => {
            for (key, seq) in seeds {
                match sequencers.get_mut(&key) {
                    Some(sequencer) => {
                        let released = sequencer.seeded(seq, Instant::now());
                        send_released(gateway, &key, released);
                    }
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
                if let Some(sequencer) = sequencers.get_mut(&key)
                    && sequencer.tail_read(seq)
                {
                    fill_gap(gateway, &key, sequencer, fill_tx);
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
    let log = gateway.message_log.clone();
    let tails = tails.clone();
    tokio::spawn(async move {
        let read = read_tails(&log, keys.into_iter()).await;
        if tails.send(Control::Tails(read)).is_err() {
            tracing::debug!("fan-out ended before the tails were read");
        }
    });
}

async fn dispatch(gateway: &Gateway, sequencers: &mut HashMap<GroupKey, Sequencer>, envelope: &Envelope) {
    let Topic { org, target } = &envelope.topic;
    match (target, &envelope.event) {
        (Target::Group(group), Event::NewGroupMessage(message)) => {
            let key = (org.clone(), *group);
            let sequencer = match sequencers.entry(key.clone()) {
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
            let released = sequencer.accept(message.clone(), Instant::now());
            send_released(gateway, &key, released);
        }
        (Target::Group(group), Event::GroupTyping { from, .. }) => {
            let room = rooms::group(org, *group);
            emit_to_room(gateway, &room, &envelope.event, |s| s.caller.email != *from);
        }
        (Target::Group(group), Event::GroupDeleted { .. }) => {
            room_membership::group_deleted(gateway, org, *group, &envelope.event).await;
            sequencers.remove(&(org.clone(), *group));
        }
        (Target::Group(group), _) => {
            emit_to_room(gateway, &rooms::group(org, *group), &envelope.event, |_| true);
        }
        (Target::User(email), Event::AddedToGroup { group }) => {
            room_membership::added_to_group(gateway, org, email, group.id, &envelope.event).await;
        }
        (Target::User(email), Event::RemovedFromGroup { group_id }) => {
            room_membership::removed_from_group(gateway, org, email, *group_id, &envelope.event).await;
        }
        (Target::User(email), _) => {
            emit_to_room(gateway, &rooms::user(org, email), &envelope.event, |_| true);
        }
    }
}

/// Starts a store fetch of the group's gap in the background (its answer comes back as
/// [`Filled`]), or sends what settling the gap released.
fn fill_gap(gateway: &Gateway, key: &GroupKey, sequencer: &mut Sequencer, results: &mpsc::Sender<Filled>) {
    match sequencer.gap_to_fill(Instant::now()) {
        Gap::Settled(released) => send_released(gateway, key, released),
        Gap::Fetch { after, count } => {
            gateway.metrics.gap_fills.fetch_add(1, Ordering::Relaxed);
            let (log, key, results) = (gateway.message_log.clone(), key.clone(), results.clone());
            tokio::spawn(async move {
                let messages = log.messages_after(&key.0, key.1, after, count).await;
                if results.send(Filled { key, messages }).await.is_err() {
                    tracing::debug!("fan-out ended before a gap fill returned");
                }
            });
        }
    }
}

/// Sends what a sequencer let out, and counts what it dropped or skipped.
fn send_released(gateway: &Gateway, key: &GroupKey, released: Released) {
    if released.duplicates > 0 {
        gateway
            .metrics
            .duplicates_dropped
            .fetch_add(released.duplicates, Ordering::Relaxed);
    }
    if let Some(missing) = released.skipped {
        gateway.metrics.gaps_skipped.fetch_add(1, Ordering::Relaxed);
        tracing::info!(group = %key.1, missing, "gap given up on; clients catch up by seq");
    }
    for message in &released.messages {
        send_message(gateway, key, message);
    }
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
