//! The socket.io tier: the `/community-chat` namespace (socketioxide), fed by the event bus.
//! It reaches the domain through `ChatService`'s operations and two narrow capabilities:
//! `MessageLog` (committed messages by seq) and `EventFeed` (the receiving side of the bus).
//!
//! - [`connection`]: the handshake (auth, auto-join, subscribe) and disconnect.
//! - [`events`]: `sendGroupMessage`, `joinGroup`, `leaveGroup`, `groupTyping`, `syncGroups`.
//! - [`catch_up`], [`shared_reads`]: what a socket missed, from reads shared per group.
//! - [`fanout`]: bus envelopes to local sockets, the async shell around [`sequencer`], which
//!   orders each group's messages by seq (hold, fill, drop, skip) with no I/O.
//! - [`room_membership`]: which group rooms each socket is in, and the subscriptions that go
//!   with them.
//! - [`subscriptions`]: reference-counted bus subscriptions. It tells the fan-out where each
//!   group's ordering starts through [`control`] (`GroupKey`, `Control`), which neither owns.
//! - [`session`], [`emit`], [`reply`], [`rooms`]: per-socket state, emits, answers, room names.
//!
//! Dependencies run one way: `fanout` uses `room_membership`, which uses `subscriptions`, and
//! both `subscriptions` and `fanout` use `control`; no module but this root uses `fanout`.

mod catch_up;
mod connection;
mod control;
mod emit;
mod events;
mod fanout;
mod reply;
mod room_membership;
pub mod rooms;
mod sequencer;
mod session;
mod shared_reads;
mod subscriptions;

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use community_chat_shared::{
    auth::Authenticator,
    config::GatewayLimits,
    domain::{ChatService, MessageLog},
    metrics::{Histogram, Metrics},
};
use socketioxide::{SocketIo, TransportType, handler::ConnectHandler, layer::SocketIoLayer};

pub use subscriptions::Subscriptions;

/// The namespace of the spec.
pub const NAMESPACE: &str = "/community-chat";

/// Counters of the gateway, rendered on `/metrics`.
#[derive(Default)]
pub struct GatewayMetrics {
    pub sockets: AtomicI64,
    pub events_in: AtomicU64,
    pub events_out: AtomicU64,
    pub events_lagged: AtomicU64,
    pub duplicates_dropped: AtomicU64,
    pub gap_fills: AtomicU64,
    pub gaps_skipped: AtomicU64,
    pub slow_clients_disconnected: AtomicU64,
    pub fanout_messages: AtomicU64,
    /// Commit-to-emit time of fanned-out messages.
    pub fanout_latency: Histogram,
    /// Groups with local sockets whose messages this gateway orders (one room each).
    pub group_rooms: AtomicI64,
    /// Messages held for a missing seq, over all groups.
    pub held_messages: AtomicI64,
    /// Bus events received but not yet fanned out.
    pub bus_queue: AtomicI64,
    /// Handshakes and catch-ups waiting for their turn at the database.
    pub admission_waiting: AtomicI64,
}

/// What the socket handlers reach through socketioxide's state.
pub struct Gateway {
    pub service: ChatService,
    /// Committed messages by seq: the fan-out's gap fills and tail reads, shared catch-ups.
    message_log: MessageLog,
    pub auth: Arc<Authenticator>,
    pub subscriptions: Subscriptions,
    pub limits: GatewayLimits,
    pub metrics: Arc<GatewayMetrics>,
    io: std::sync::OnceLock<SocketIo>,
    /// Database reads of handshakes and catch-ups run at most this many at a time; the rest
    /// wait in line (up to [`ADMISSION_WAIT`]) instead of timing out on the pool, so a
    /// reconnect storm drains at the database's pace rather than failing and retrying.
    admission: tokio::sync::Semaphore,
    /// Catch-up reads shared by the sockets syncing one group at the same time.
    shared_reads: shared_reads::SharedReads,
}

/// Longest a handshake or catch-up waits for its turn at the database (below socket.io
/// clients' default 20 s connect timeout).
const ADMISSION_WAIT: Duration = Duration::from_secs(15);

impl Gateway {
    /// Runs `work` (handshake or catch-up reads) when its turn at the database comes.
    pub(crate) async fn admitted<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, community_chat_shared::error::DomainError>>,
    ) -> Result<T, community_chat_shared::error::DomainError> {
        use community_chat_shared::error::DomainError;
        /// Counts a waiter until it is admitted or gives up (also when its future is dropped).
        struct Waiting<'a>(&'a AtomicI64);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.metrics.admission_waiting.fetch_add(1, Ordering::Relaxed);
        let waiting = Waiting(&self.metrics.admission_waiting);
        let permit = tokio::time::timeout(ADMISSION_WAIT, self.admission.acquire()).await;
        drop(waiting);
        let _permit = permit
            .map_err(|_| {
                DomainError::Unavailable("gateway busy: too many connections waiting for the database".into())
            })?
            .map_err(|_| DomainError::Unavailable("gateway is closing".into()))?;
        work.await
    }

    /// The local sockets in a room of the namespace.
    fn namespace_sockets(&self, room: &str) -> Vec<socketioxide::extract::SocketRef> {
        match self.io.get().and_then(|io| io.of(NAMESPACE)) {
            Some(ns) => ns.to(room.to_owned()).sockets(),
            None => Vec::new(),
        }
    }
}

/// A running gateway: its socket.io handle, for shutdown and tests.
#[derive(Clone)]
pub struct GatewayHandle {
    pub io: SocketIo,
    pub gateway: Arc<Gateway>,
}

impl GatewayHandle {
    /// Sockets connected to this process.
    pub fn socket_count(&self) -> usize {
        self.io.of(NAMESPACE).map(|ns| ns.sockets().len()).unwrap_or(0)
    }
}

/// Gives a request its own copies of its header values and URI. hyper parses them as slices of
/// the connection's HTTP read buffer (8–16 KB), axum keeps a clone of the URI as `OriginalUri`,
/// and engineioxide keeps every socket's request parts for the socket's whole life: together
/// they pinned that buffer, half of an idle socket's memory. Applied in front of the socket.io
/// layer; it copies a few hundred bytes per request.
pub async fn detach_request_buffers(mut request: axum::extract::Request) -> axum::extract::Request {
    let headers = std::mem::take(request.headers_mut());
    let mut owned = axum::http::HeaderMap::with_capacity(headers.len());
    for (name, value) in &headers {
        let copy = axum::http::HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
        owned.append(name.clone(), copy);
    }
    *request.headers_mut() = owned;
    if let Ok(uri) = axum::http::Uri::try_from(request.uri().to_string()) {
        if let Some(original) = request.extensions_mut().get_mut::<axum::extract::OriginalUri>() {
            original.0 = uri.clone();
        }
        *request.uri_mut() = uri;
    }
    request
}

/// Builds the socket.io layer for `/community-chat` and starts the fan-out from the bus.
pub fn build(
    service: ChatService,
    auth: Arc<Authenticator>,
    limits: GatewayLimits,
    metrics: &Metrics,
) -> (SocketIoLayer, GatewayHandle) {
    let feed = service.event_feed();
    let message_log = service.message_log();
    let (control_sender, control) = control::channel(message_log.clone());
    let store_connections = service.database_connections();
    let gateway = Arc::new(Gateway {
        subscriptions: Subscriptions::start(feed.clone(), control_sender),
        service,
        message_log,
        auth,
        limits: limits.clone(),
        metrics: Arc::new(GatewayMetrics::default()),
        io: std::sync::OnceLock::new(),
        // Half the pool: sends, joins and seeds keep the other half.
        admission: tokio::sync::Semaphore::new((store_connections / 2).max(1) as usize),
        shared_reads: shared_reads::SharedReads::default(),
    });
    let (layer, io) = SocketIo::builder()
        .with_state(gateway.clone())
        .transports([TransportType::Polling, TransportType::Websocket])
        .ping_interval(Duration::from_millis(limits.socket_ping_interval_ms))
        .ping_timeout(Duration::from_millis(limits.socket_ping_timeout_ms))
        .max_buffer_size(limits.socket_max_queued_packets as usize)
        .max_payload(u64::from(limits.socket_max_payload_bytes))
        .ws_max_message_size(limits.socket_max_payload_bytes as usize)
        .ws_max_frame_size(limits.socket_max_payload_bytes as usize)
        .ws_read_buffer_size(limits.socket_read_buffer_bytes as usize)
        .build_layer();
    io.ns(NAMESPACE, connection::connected.with(connection::handshake));
    if gateway.io.set(io.clone()).is_err() {
        tracing::error!("gateway io set twice");
    }
    tokio::spawn(fanout::run(
        gateway.clone(),
        feed.deliveries(),
        control,
        feed.reconnections(),
    ));
    register_metrics(metrics, &gateway);
    (layer, GatewayHandle { io, gateway })
}

fn register_metrics(metrics: &Metrics, gateway: &Arc<Gateway>) {
    let m = gateway.metrics.clone();
    let subscriptions = gateway.subscriptions.clone();
    metrics.add_source(move |text| {
        let counters: [(&str, &str, u64); 8] = [
            (
                "gateway_events_in_total",
                "Bus events received by this gateway.",
                m.events_in.load(Ordering::Relaxed),
            ),
            (
                "gateway_events_out_total",
                "Socket emits of bus events.",
                m.events_out.load(Ordering::Relaxed),
            ),
            (
                "gateway_events_lagged_total",
                "Bus events skipped because the fan-out fell behind.",
                m.events_lagged.load(Ordering::Relaxed),
            ),
            (
                "gateway_duplicates_dropped_total",
                "Messages dropped as already sent.",
                m.duplicates_dropped.load(Ordering::Relaxed),
            ),
            (
                "gateway_gap_fills_total",
                "Store fetches of messages missing from the bus.",
                m.gap_fills.load(Ordering::Relaxed),
            ),
            (
                "gateway_gaps_skipped_total",
                "Gaps given up on (clients catch up).",
                m.gaps_skipped.load(Ordering::Relaxed),
            ),
            (
                "gateway_slow_clients_disconnected_total",
                "Sockets disconnected for a full queue.",
                m.slow_clients_disconnected.load(Ordering::Relaxed),
            ),
            (
                "gateway_fanout_messages_total",
                "Messages fanned out to rooms.",
                m.fanout_messages.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            text.counter(name, help).sample(&[], value);
        }
        let gauges: [(&str, &str, i64); 7] = [
            (
                "gateway_sockets_connected",
                "Sockets connected to this gateway.",
                m.sockets.load(Ordering::Relaxed),
            ),
            (
                "gateway_bus_subscriptions",
                "Bus topics this gateway is subscribed to.",
                subscriptions.active.load(Ordering::Relaxed) as i64,
            ),
            (
                "gateway_group_rooms",
                "Groups with sockets on this gateway.",
                m.group_rooms.load(Ordering::Relaxed),
            ),
            (
                "gateway_held_messages",
                "Messages held back waiting for a missing seq.",
                m.held_messages.load(Ordering::Relaxed),
            ),
            (
                "gateway_bus_queue_depth",
                "Bus events waiting for the fan-out.",
                m.bus_queue.load(Ordering::Relaxed),
            ),
            (
                "gateway_admission_queue_depth",
                "Handshakes and catch-ups waiting for their turn at the database.",
                m.admission_waiting.load(Ordering::Relaxed),
            ),
            (
                "gateway_subscription_queue_depth",
                "Subscribe/unsubscribe requests waiting for the subscription task.",
                subscriptions.queued() as i64,
            ),
        ];
        for (name, help, value) in gauges {
            text.gauge(name, help).sample(&[], value);
        }
        text.histogram(
            "gateway_fanout_latency_seconds",
            "Time from a message's commit to its emit to the local sockets.",
        )
        .series(&[], &m.fanout_latency.snapshot());
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn detached_request_keeps_headers_uri_and_upgrade_extensions() {
        let mut request = axum::extract::Request::builder()
            .uri("/socket.io/?EIO=4&transport=websocket")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("x-custom", "a")
            .header("x-custom", "b")
            .body(axum::body::Body::empty())
            .expect("request");
        let original = request.uri().clone();
        request
            .extensions_mut()
            .insert(axum::extract::OriginalUri(original.clone()));
        request.extensions_mut().insert(7u32);
        let out = detach_request_buffers(request).await;
        assert_eq!(out.uri(), &original);
        assert_eq!(
            out.extensions().get::<axum::extract::OriginalUri>().map(|o| &o.0),
            Some(&original)
        );
        assert_eq!(out.extensions().get::<u32>(), Some(&7), "other extensions stay");
        assert_eq!(out.headers()["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
        let custom: Vec<_> = out.headers().get_all("x-custom").iter().collect();
        assert_eq!(custom, ["a", "b"], "repeated headers keep their order");
    }
}
