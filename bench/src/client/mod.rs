//! A minimal Socket.IO v5 client over Engine.IO v4 WebSocket, written so that one process holds
//! tens of thousands of sockets: one small task per socket, a 4 KiB read buffer, no per-socket
//! timers, events parsed with borrowed serde structs, and counters shared by all.
//!
//! This module owns the run's shared state ([`Clients`]: configuration, per-socket status and
//! the counters every socket task updates) and starting and stopping the sockets. The rest:
//! - `wire`: the packet prefixes and the borrowed views of the events (protocol summary there);
//! - `socket`: one socket's task (handshake, reading a connection, reconnecting);
//! - `delivery`: what a connection does with what it receives (seq order, gaps, syncs, catch-up).
//!
//! A socket to a loopback gateway binds its TCP socket to one of several source addresses
//! (127.0.0.2, 127.0.0.3, ...) before connecting, so the ephemeral port range of one address is
//! not a ceiling; a socket to any other address leaves the source to the system.

mod delivery;
mod socket;
mod wire;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    sync::{Semaphore, mpsc},
    task::JoinHandle,
};

pub use self::wire::due_us;
use crate::{plan::Plan, stats::Latency};

/// Longest reconnection delay (socket.io's `reconnectionDelayMax` default).
const MAX_RECONNECT_DELAY_MS: u64 = 5_000;
/// Distinct error texts kept (counts beyond go to "other").
const MAX_ERROR_KINDS: usize = 40;

/// A gateway (or the load balancer in front of the gateways) a socket connects to.
#[derive(Clone, Debug)]
pub struct GatewayEndpoint {
    /// The address dialled.
    pub addr: SocketAddr,
    /// `host[:port]` the WebSocket upgrade names in its `Host` header: what an ingress or a
    /// load balancer routes by.
    pub host: String,
    /// The Socket.IO path, `/socket.io/` unless the gateways sit under a path prefix.
    pub path: String,
}

impl GatewayEndpoint {
    /// A gateway listening on `addr` itself.
    pub fn direct(addr: SocketAddr) -> Self {
        Self {
            addr,
            host: addr.to_string(),
            path: "/socket.io/".to_owned(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub gateways: Vec<GatewayEndpoint>,
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
        crate::stats::count_summary(&self.errors, "; ")
    }

    /// Starts one socket per `(user, gateway index)` and returns once each has connected or
    /// failed its first handshake; at most `concurrency` handshakes run at once.
    /// Connects users `0..count`, spread over `gateways` gateways in turn.
    pub async fn connect_spread(self: &Arc<Self>, count: usize, gateways: usize, concurrency: usize) -> ConnectReport {
        let sockets = (0..count).map(|u| (u as u32, u % gateways.max(1))).collect();
        self.connect_all(sockets, concurrency).await
    }

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
}

/// `127.0.0.2`, `127.0.0.3`, ... (`count` of them).
pub fn source_ips(count: u8) -> Vec<Ipv4Addr> {
    (0..count.clamp(1, 250))
        .map(|i| Ipv4Addr::new(127, 0, 0, 2 + i))
        .collect()
}
