//! A minimal Socket.IO v5 client over Engine.IO v4 WebSocket, written so that one process holds
//! tens of thousands of sockets: one small task per socket, a 4 KiB read buffer, no per-socket
//! timers, events parsed with borrowed serde structs, and counters shared by all.
//!
//! Wire protocol (WebSocket transport only, text frames):
//! - server `0{"sid":..,"pingInterval":..}` (Engine.IO open)
//! - client `40/community-chat,{"token":..,"orgId":..,"sync":[..]}` (Socket.IO CONNECT with auth)
//! - server `40/community-chat,{"sid":..}` (connected) or `44/community-chat,{"message":..}`
//! - server `2` (ping), client `3` (pong)
//! - server `42/community-chat,["newGroupMessage",{..}]` (events)
//!
//! Each socket binds its TCP socket to one of several source addresses (127.0.0.2, 127.0.0.3,
//! ...) before connecting, so the ephemeral port range of one address is not a ceiling.

use std::{
    borrow::Cow,
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, value::RawValue};
use tokio::{
    net::{TcpSocket, TcpStream},
    sync::{Semaphore, mpsc},
    task::JoinHandle,
};
use tokio_tungstenite::{
    WebSocketStream, client_async_with_config,
    tungstenite::{Message, protocol::WebSocketConfig},
};

use crate::{
    plan::Plan,
    stats::{Latency, now_us},
};

const NAMESPACE_CONNECT: &str = "40/community-chat,";
const NAMESPACE_ERROR: &str = "44/community-chat,";
const NAMESPACE_EVENT: &str = "42/community-chat,";
const NAMESPACE_DISCONNECT: &str = "41/community-chat";
const NAMESPACE_ACK: &str = "43/community-chat,";
/// Longest reconnection delay (socket.io's `reconnectionDelayMax` default).
const MAX_RECONNECT_DELAY_MS: u64 = 5_000;
/// Distinct error texts kept (counts beyond go to "other").
const MAX_ERROR_KINDS: usize = 40;

type Ws = WebSocketStream<TcpStream>;

#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub gateways: Vec<SocketAddr>,
    pub source_ips: Vec<Ipv4Addr>,
    pub handshake_timeout: Duration,
    /// After a disconnect: reconnect to the next gateway after a random delay in this range
    /// (milliseconds), with `auth.sync` carrying the last seq of each group. `None`: stay off.
    pub reconnect: Option<(u64, u64)>,
}

/// Per socket (one per user).
#[derive(Default)]
pub struct SocketStatus {
    /// Connections established so far (1 after the first handshake).
    pub connections: AtomicU32,
    /// When the latest connection's handshake completed (bench clock, microseconds).
    pub connected_at_us: AtomicU64,
    /// After a reconnect: when `groupsSynced` had come and every group had reached its catch-up
    /// target (0: not yet).
    pub caught_up_at_us: AtomicU64,
}

/// Every socket of a run and what they received.
pub struct Clients {
    pub plan: Arc<Plan>,
    pub cfg: ClientConfig,
    /// Per (user, group) slot: the last seq received.
    pub last_seq: Vec<AtomicI64>,
    pub status: Vec<SocketStatus>,
    /// Messages received in order for the first time.
    pub delivered: AtomicU64,
    /// POST due time to socket receipt, for deliveries on a socket's first connection.
    pub latency: Latency,
    /// The same after a reconnect (catch-up included).
    pub latency_after_reconnect: Latency,
    /// A seq at or below one already received.
    pub duplicates: AtomicU64,
    /// Messages that arrived more than one seq above the last one held (each set aside and
    /// the group synced): the server promises none.
    pub gaps: AtomicU64,
    /// Groups synced again after a gap or a failed sync.
    pub resyncs: AtomicU64,
    /// Messages of a group the socket's user is not in, or unparsable events.
    pub unexpected: AtomicU64,
    pub handshakes_ok: AtomicU64,
    pub handshakes_failed: AtomicU64,
    pub disconnects: AtomicU64,
    pub connected_now: AtomicI64,
    /// TCP connect to Socket.IO CONNECT acknowledged.
    pub handshake_latency: Latency,
    pub pings: AtomicU64,
    pub groups_synced: AtomicU64,
    /// `groupsSynced` entries that carried an error.
    pub sync_errors: AtomicU64,
    pub other_events: AtomicU64,
    /// Per group: the seq a reconnected socket must reach to count as caught up (the storm
    /// sets it to the highest acknowledged seq at the moment of the kill).
    pub catch_up_target: OnceLock<Vec<i64>>,
    pub last_delivery_us: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    /// The first few gaps seen, for the report.
    pub gap_examples: Mutex<Vec<String>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// How long a group whose sync failed first waits before it is synced again.
const SYNC_RETRY: Duration = Duration::from_secs(1);

/// What one connection of a socket keeps.
#[derive(Default)]
struct Connection {
    /// `groupsSynced` has arrived on this connection.
    synced: bool,
    /// Slots with a gap being synced, and since when (bench clock).
    pending: Vec<(usize, u64)>,
    /// Groups to sync now.
    sync_now: Vec<u32>,
    /// Groups to sync again at `retry_at` (their sync failed).
    retry: Vec<u32>,
    retry_at: Option<tokio::time::Instant>,
    /// `syncGroups` sent and not answered yet: ack id and groups.
    in_flight: Vec<(u64, Vec<u32>)>,
    next_ack: u64,
    /// Failed syncs in a row: the retry delay doubles with each (at most 5 s), randomised.
    sync_failures: u32,
}

impl Connection {
    /// Schedules the retry of the failed groups, if any and none is scheduled.
    fn schedule_retry(&mut self) {
        if self.retry.is_empty() || self.retry_at.is_some() {
            return;
        }
        self.sync_failures += 1;
        let base = SYNC_RETRY.as_millis() as u64;
        let delay = (base << self.sync_failures.min(8).saturating_sub(1)).min(MAX_RECONNECT_DELAY_MS);
        let delay = rand::random_range(delay / 2..=delay + delay / 2);
        self.retry_at = Some(tokio::time::Instant::now() + Duration::from_millis(delay));
    }
}

#[derive(Deserialize)]
struct EventFrame<'a>(#[serde(borrow)] Cow<'a, str>, #[serde(borrow)] &'a RawValue);

#[derive(Deserialize)]
struct MessageView<'a> {
    #[serde(rename = "groupId", borrow)]
    group_id: Cow<'a, str>,
    seq: i64,
    #[serde(borrow)]
    content: Cow<'a, str>,
}

/// The due time a bench message carries in its content (`b:<n>:<due_us>`).
pub fn due_us(content: &str) -> Option<u64> {
    content.strip_prefix("b:")?.split(':').nth(1)?.parse().ok()
}

/// The outcome of connecting a batch of sockets.
#[derive(Clone, Debug, Default)]
pub struct ConnectReport {
    pub ok: u64,
    pub failed: u64,
    pub seconds: f64,
}

impl Clients {
    pub fn new(plan: Arc<Plan>, cfg: ClientConfig) -> Arc<Self> {
        let users = plan.users.len();
        Arc::new(Self {
            last_seq: (0..plan.slots).map(|_| AtomicI64::new(0)).collect(),
            status: (0..users).map(|_| SocketStatus::default()).collect(),
            plan,
            cfg,
            delivered: AtomicU64::new(0),
            latency: Latency::default(),
            latency_after_reconnect: Latency::default(),
            duplicates: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
            unexpected: AtomicU64::new(0),
            handshakes_ok: AtomicU64::new(0),
            handshakes_failed: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            connected_now: AtomicI64::new(0),
            handshake_latency: Latency::default(),
            pings: AtomicU64::new(0),
            groups_synced: AtomicU64::new(0),
            sync_errors: AtomicU64::new(0),
            other_events: AtomicU64::new(0),
            catch_up_target: OnceLock::new(),
            last_delivery_us: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            gap_examples: Mutex::new(Vec::new()),
            tasks: Mutex::new(Vec::new()),
        })
    }

    fn note(&self, what: &str) {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        let key = if errors.len() < MAX_ERROR_KINDS || errors.contains_key(what) {
            what.to_owned()
        } else {
            "other".to_owned()
        };
        *errors.entry(key).or_default() += 1;
    }

    /// `text xN, ...` of the connection errors and disconnect reasons seen.
    pub fn error_summary(&self) -> String {
        let errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        errors
            .iter()
            .map(|(k, v)| format!("{k} x{v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Starts one socket per `(user, gateway index)` and returns once each has connected or
    /// failed its first handshake; at most `concurrency` handshakes run at once.
    pub async fn connect_all(self: &Arc<Self>, sockets: Vec<(u32, usize)>, concurrency: usize) -> ConnectReport {
        let started = Instant::now();
        let total = sockets.len();
        let gate = Arc::new(Semaphore::new(concurrency.max(1)));
        let (tx, mut rx) = mpsc::unbounded_channel::<bool>();
        {
            let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
            for (user, gateway) in sockets {
                let me = self.clone();
                let (gate, tx) = (gate.clone(), tx.clone());
                tasks.push(tokio::spawn(
                    async move { me.run_socket(user, gateway, gate, tx).await },
                ));
            }
        }
        drop(tx);
        let mut report = ConnectReport::default();
        while (report.ok + report.failed) < total as u64 {
            match rx.recv().await {
                Some(true) => report.ok += 1,
                Some(false) => report.failed += 1,
                None => break,
            }
        }
        report.seconds = started.elapsed().as_secs_f64();
        report
    }

    /// Stops every socket (their connections close).
    pub fn shutdown(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            task.abort();
        }
    }

    /// Messages owed and never received: per socket and group, the acknowledged seqs above the
    /// last one received (a socket never skips a seq, so this is exact).
    pub fn lost(&self, acked: &[i64]) -> u64 {
        let mut lost = 0;
        for user in &self.plan.users {
            for (i, group) in user.groups.iter().enumerate() {
                let last = self.last_seq[user.first_slot as usize + i].load(Ordering::Acquire);
                lost += (acked[*group as usize] - last).max(0) as u64;
            }
        }
        lost
    }

    /// Waits until `done` holds, polling every 10 ms, for at most `timeout`; whether it held.
    pub async fn wait_for(&self, timeout: Duration, done: impl Fn(&Self) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(self) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn run_socket(
        self: Arc<Self>,
        user: u32,
        mut gateway: usize,
        gate: Arc<Semaphore>,
        first: mpsc::UnboundedSender<bool>,
    ) {
        let mut first = Some(first);
        let status = &self.status[user as usize];
        // Consecutive failed attempts: the reconnection delay doubles with each (socket.io).
        let mut failures: u32 = 0;
        loop {
            let reconnecting = status.connections.load(Ordering::Relaxed) > 0;
            let permit = if first.is_some() {
                gate.acquire().await.ok()
            } else {
                None
            };
            let started = now_us();
            let result = tokio::time::timeout(self.cfg.handshake_timeout, self.handshake(user, gateway, reconnecting))
                .await
                .unwrap_or_else(|_| Err("handshake timed out".to_owned()));
            drop(permit);
            match result {
                Ok(ws) => {
                    let now = now_us();
                    self.handshake_latency.record(user as usize, now - started);
                    self.handshakes_ok.fetch_add(1, Ordering::Relaxed);
                    self.connected_now.fetch_add(1, Ordering::Relaxed);
                    status.connected_at_us.store(now, Ordering::Release);
                    status.connections.fetch_add(1, Ordering::AcqRel);
                    if let Some(tx) = first.take() {
                        let _ = tx.send(true);
                    }
                    failures = 0;
                    let reason = self.pump(user, ws, reconnecting).await;
                    self.connected_now.fetch_sub(1, Ordering::Relaxed);
                    self.disconnects.fetch_add(1, Ordering::Relaxed);
                    self.note(&format!("disconnected: {reason}"));
                    // The gateway went away: the load balancer sends us to another one.
                    gateway = (gateway + 1) % self.cfg.gateways.len();
                }
                Err(e) => {
                    self.handshakes_failed.fetch_add(1, Ordering::Relaxed);
                    if let Some(tx) = first.take() {
                        self.note(&e);
                        let _ = tx.send(false);
                        return;
                    }
                    // Nobody listens there: try the next gateway. A refused handshake (e.g. 503)
                    // is retried on the same one, later.
                    if e.starts_with("connect:") {
                        gateway = (gateway + 1) % self.cfg.gateways.len();
                    }
                    self.note(&e);
                    failures += 1;
                }
            }
            let Some((lo, hi)) = self.cfg.reconnect else {
                return;
            };
            // socket.io: delay = min(base * 2^attempts, max), randomised by +-50%; the base range
            // is [lo, hi] (1000 ms +-50% by default in socket.io).
            let base = if hi > lo { rand::random_range(lo..hi) } else { lo };
            let delay = base
                .saturating_mul(1u64 << failures.min(16))
                .min(MAX_RECONNECT_DELAY_MS.max(hi));
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
    }

    fn auth(&self, user: u32, sync: bool) -> String {
        let plan = &self.plan;
        let u = &plan.users[user as usize];
        let mut auth = json!({ "token": u.token, "orgId": plan.org });
        if sync {
            let groups: Vec<_> = u
                .groups
                .iter()
                .enumerate()
                .map(|(i, g)| {
                    let after = self.last_seq[u.first_slot as usize + i].load(Ordering::Acquire);
                    json!({ "groupId": plan.groups[*g as usize].id, "afterSeq": after })
                })
                .collect();
            auth["sync"] = json!(groups);
        }
        auth.to_string()
    }

    async fn handshake(&self, user: u32, gateway: usize, sync: bool) -> Result<Ws, String> {
        let addr = self.cfg.gateways[gateway];
        let source = self.cfg.source_ips[user as usize % self.cfg.source_ips.len()];
        let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
        socket
            .bind(SocketAddr::from((source, 0)))
            .map_err(|e| format!("bind {source}: {e}"))?;
        let tcp = socket.connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
        let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
        let (mut ws, _) = client_async_with_config(url, tcp, Some(config))
            .await
            .map_err(|e| format!("websocket upgrade: {e}"))?;
        let open = next_text(&mut ws).await?;
        if !open.starts_with('0') {
            return Err(format!("expected the Engine.IO open packet, got {open:.60}"));
        }
        let connect = format!("{NAMESPACE_CONNECT}{}", self.auth(user, sync));
        ws.send(Message::text(connect))
            .await
            .map_err(|e| format!("send connect: {e}"))?;
        loop {
            let text = next_text(&mut ws).await?;
            if text.starts_with(NAMESPACE_CONNECT) {
                return Ok(ws);
            }
            if let Some(error) = text.strip_prefix(NAMESPACE_ERROR) {
                return Err(format!("connect_error {error:.120}"));
            }
            if text == "2" {
                ws.send(Message::text("3")).await.map_err(|e| format!("pong: {e}"))?;
            }
        }
    }

    /// Reads a connected socket until it closes; why it ended. Like a correct client (README,
    /// Delivery guarantees), it never skips a seq: a message more than one above the last one
    /// held is set aside and the group is synced (`syncGroups` from the last seq held); a group
    /// whose sync failed is synced again a second later.
    async fn pump(&self, user: u32, mut ws: Ws, reconnected: bool) -> String {
        let mut conn = Connection::default();
        loop {
            let frame = tokio::select! {
                frame = ws.next() => frame,
                _ = tokio::time::sleep_until(conn.retry_at.unwrap_or_else(tokio::time::Instant::now)), if conn.retry_at.is_some() => {
                    conn.retry_at = None;
                    let groups = std::mem::take(&mut conn.retry);
                    if let Err(e) = self.send_sync(user, &mut ws, &mut conn, &groups).await {
                        return e;
                    }
                    continue;
                }
            };
            let Some(frame) = frame else {
                return "connection ended".to_owned();
            };
            match frame {
                Ok(Message::Text(text)) => {
                    let text = text.as_str();
                    if text == "2" {
                        self.pings.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = ws.send(Message::text("3")).await {
                            return format!("pong failed: {e}");
                        }
                    } else if let Some(event) = text.strip_prefix(NAMESPACE_EVENT) {
                        self.on_event(user, event, reconnected, &mut conn);
                        if !conn.sync_now.is_empty() {
                            let groups = std::mem::take(&mut conn.sync_now);
                            if let Err(e) = self.send_sync(user, &mut ws, &mut conn, &groups).await {
                                return e;
                            }
                        }
                        conn.schedule_retry();
                    } else if let Some(ack) = text.strip_prefix(NAMESPACE_ACK) {
                        self.on_ack(ack, &mut conn);
                        conn.schedule_retry();
                    } else if text.starts_with(NAMESPACE_DISCONNECT) {
                        return "the server disconnected the socket".to_owned();
                    } else if text.starts_with('1') {
                        return "Engine.IO close".to_owned();
                    }
                }
                Ok(Message::Close(_)) => return "closed by the server".to_owned(),
                Ok(_) => {}
                Err(e) => return format!("read: {e}"),
            }
        }
    }

    /// `syncGroups { groups: [{ groupId, afterSeq }] }` from the last seq held of each group,
    /// with an ack; groups whose sync is already under way are left out.
    async fn send_sync(&self, user: u32, ws: &mut Ws, conn: &mut Connection, groups: &[u32]) -> Result<(), String> {
        let mut wanted: Vec<u32> = groups
            .iter()
            .copied()
            .filter(|g| !conn.in_flight.iter().any(|(_, gs)| gs.contains(g)))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        if wanted.is_empty() {
            return Ok(());
        }
        let plan = &self.plan;
        let items: Vec<_> = wanted
            .iter()
            .filter_map(|g| {
                let slot = plan.slot(user, *g)?;
                let after = self.last_seq[slot].load(Ordering::Acquire);
                Some(json!({ "groupId": plan.groups[*g as usize].id, "afterSeq": after }))
            })
            .collect();
        self.resyncs.fetch_add(items.len() as u64, Ordering::Relaxed);
        let ack = conn.next_ack;
        conn.next_ack += 1;
        conn.in_flight.push((ack, wanted));
        let packet = format!("{NAMESPACE_EVENT}{ack}{}", json!(["syncGroups", { "groups": items }]));
        ws.send(Message::text(packet))
            .await
            .map_err(|e| format!("syncGroups send failed: {e}"))
    }

    /// `43/community-chat,<id>[{ ok, data | error }]`: the answer to a `syncGroups`.
    fn on_ack(&self, ack: &str, conn: &mut Connection) {
        let digits = ack.bytes().take_while(u8::is_ascii_digit).count();
        let Ok(id) = ack[..digits].parse::<u64>() else {
            self.note("ack without an id");
            return;
        };
        let Some(position) = conn.in_flight.iter().position(|(a, _)| *a == id) else {
            return;
        };
        let (_, groups) = conn.in_flight.swap_remove(position);
        #[derive(Deserialize)]
        struct Answer<'a> {
            ok: bool,
            #[serde(borrow, default)]
            data: Option<&'a RawValue>,
        }
        match serde_json::from_str::<(Answer,)>(&ack[digits..]) {
            Ok((Answer {
                ok: true,
                data: Some(data),
            },)) => self.on_sync_summary(data.get(), conn),
            Ok(_) => {
                self.sync_errors.fetch_add(groups.len() as u64, Ordering::Relaxed);
                self.note(&format!("syncGroups refused: {:.120}", &ack[digits..]));
                conn.retry.extend(groups);
            }
            Err(_) => {
                self.note("unparsable syncGroups answer");
                conn.retry.extend(groups);
            }
        }
    }

    fn on_event(&self, user: u32, event: &str, reconnected: bool, conn: &mut Connection) {
        let Ok(EventFrame(name, data)) = serde_json::from_str::<EventFrame>(event) else {
            self.unexpected.fetch_add(1, Ordering::Relaxed);
            self.note("unparsable event");
            return;
        };
        match name.as_ref() {
            "newGroupMessage" => self.on_message(user, data.get(), reconnected, conn),
            "groupsSynced" => {
                conn.synced = true;
                self.groups_synced.fetch_add(1, Ordering::Relaxed);
                self.on_sync_summary(data.get(), conn);
                if reconnected {
                    self.check_caught_up(user);
                }
            }
            _ => {
                self.other_events.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The groups of a `groupsSynced` (or `syncGroups` answer) that carry an error are synced
    /// again later.
    fn on_sync_summary(&self, data: &str, conn: &mut Connection) {
        #[derive(Deserialize)]
        struct Summary<'a> {
            #[serde(borrow)]
            groups: Vec<Entry<'a>>,
        }
        #[derive(Deserialize)]
        struct Entry<'a> {
            #[serde(rename = "groupId", borrow)]
            group_id: Cow<'a, str>,
            #[serde(default)]
            error: Option<ErrorView<'a>>,
        }
        #[derive(Deserialize)]
        struct ErrorView<'a> {
            #[serde(rename = "statusCode", default)]
            status: u16,
            #[serde(borrow, default)]
            message: Cow<'a, str>,
        }
        let Ok(summary) = serde_json::from_str::<Summary>(data) else {
            self.note("unparsable groupsSynced");
            return;
        };
        if summary.groups.iter().all(|e| e.error.is_none()) {
            conn.sync_failures = 0;
        }
        for entry in summary.groups {
            if let Some(error) = entry.error {
                self.sync_errors.fetch_add(1, Ordering::Relaxed);
                self.note(&format!("groupsSynced error {}: {}", error.status, error.message));
                if let Some(g) = self.plan.index.get(entry.group_id.as_ref()) {
                    conn.retry.push(*g);
                }
            }
        }
    }

    fn on_message(&self, user: u32, data: &str, reconnected: bool, conn: &mut Connection) {
        let Ok(message) = serde_json::from_str::<MessageView>(data) else {
            self.unexpected.fetch_add(1, Ordering::Relaxed);
            self.note("unparsable newGroupMessage");
            return;
        };
        let group = self.plan.index.get(message.group_id.as_ref()).copied();
        let slot = group.and_then(|g| self.plan.slot(user, g));
        let (Some(group), Some(slot)) = (group, slot) else {
            self.unexpected.fetch_add(1, Ordering::Relaxed);
            self.note("message of a group the user is not in");
            return;
        };
        // Only this socket's task writes its slots.
        let last = self.last_seq[slot].load(Ordering::Acquire);
        if message.seq <= last {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if message.seq > last + 1 {
            // A gap: the server promised none. Set the message aside and sync the group (once
            // per 2 s while the gap lasts).
            self.gaps.fetch_add(1, Ordering::Relaxed);
            let now = now_us();
            let recent = conn
                .pending
                .iter()
                .any(|(s, since)| *s == slot && now.saturating_sub(*since) < 2_000_000);
            let syncing = conn.in_flight.iter().any(|(_, gs)| gs.contains(&group));
            if !recent && !syncing {
                conn.pending.retain(|(s, _)| *s != slot);
                conn.pending.push((slot, now));
                conn.sync_now.push(group);
                let mut examples = self.gap_examples.lock().unwrap_or_else(|p| p.into_inner());
                if examples.len() < 5 {
                    examples.push(format!(
                        "group {} user {user}: seq {} after {last} (reconnected: {reconnected})",
                        message.group_id, message.seq
                    ));
                }
            }
            return;
        }
        conn.pending.retain(|(s, _)| *s != slot);
        self.last_seq[slot].store(message.seq, Ordering::Release);
        self.delivered.fetch_add(1, Ordering::Relaxed);
        let now = now_us();
        self.last_delivery_us.fetch_max(now, Ordering::Relaxed);
        if let Some(due) = due_us(&message.content) {
            let histogram = if reconnected {
                &self.latency_after_reconnect
            } else {
                &self.latency
            };
            histogram.record(user as usize, now.saturating_sub(due));
        }
        if reconnected && conn.synced {
            self.check_caught_up(user);
        }
    }

    /// After a reconnect's `groupsSynced`: caught up once every group reached its target.
    fn check_caught_up(&self, user: u32) {
        let status = &self.status[user as usize];
        if status.caught_up_at_us.load(Ordering::Acquire) != 0 {
            return;
        }
        if let Some(target) = self.catch_up_target.get() {
            let u = &self.plan.users[user as usize];
            for (i, g) in u.groups.iter().enumerate() {
                if self.last_seq[u.first_slot as usize + i].load(Ordering::Acquire) < target[*g as usize] {
                    return;
                }
            }
        }
        status.caught_up_at_us.store(now_us(), Ordering::Release);
    }
}

async fn next_text(ws: &mut Ws) -> Result<String, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
            Some(Ok(Message::Close(_))) => return Err("closed during the handshake".to_owned()),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("handshake read: {e}")),
            None => return Err("connection ended during the handshake".to_owned()),
        }
    }
}

/// `127.0.0.2`, `127.0.0.3`, ... (`count` of them).
pub fn source_ips(count: u8) -> Vec<Ipv4Addr> {
    (0..count.clamp(1, 250))
        .map(|i| Ipv4Addr::new(127, 0, 0, 2 + i))
        .collect()
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
