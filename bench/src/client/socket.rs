//! One socket's task: the Engine.IO/Socket.IO handshake (with `auth.sync` after a reconnect),
//! reading a connected socket until it ends, `syncGroups` requests, and the socket.io-style
//! reconnection loop with its randomised, doubling delay.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::{
    net::TcpSocket,
    sync::{Semaphore, mpsc},
};
use tokio_tungstenite::{
    client_async_with_config,
    tungstenite::{Message, protocol::WebSocketConfig},
};

use super::{
    Clients, MAX_RECONNECT_DELAY_MS,
    delivery::Connection,
    wire::{NAMESPACE_ACK, NAMESPACE_CONNECT, NAMESPACE_DISCONNECT, NAMESPACE_ERROR, NAMESPACE_EVENT, Ws},
};
use crate::stats::now_us;

impl Clients {
    pub(super) async fn run_socket(
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
        let endpoint = &self.cfg.gateways[gateway];
        let addr = endpoint.addr;
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| format!("socket: {e}"))?;
        // Loopback only: spread the sockets over several source addresses.
        if addr.is_ipv4() && addr.ip().is_loopback() && !self.cfg.source_ips.is_empty() {
            let source = self.cfg.source_ips[user as usize % self.cfg.source_ips.len()];
            socket
                .bind(SocketAddr::from((source, 0)))
                .map_err(|e| format!("bind {source}: {e}"))?;
        }
        let tcp = socket.connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        // Without it every small frame waits for an ack; a failure only costs latency.
        if let Err(e) = tcp.set_nodelay(true) {
            self.note(&format!("TCP_NODELAY: {e}"));
        }
        let url = format!("ws://{}{}?EIO=4&transport=websocket", endpoint.host, endpoint.path);
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
