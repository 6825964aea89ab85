//! The scaled bus: Redis pub/sub (or sharded pub/sub for a cluster) through fred.
//!
//! One client publishes; one subscriber client holds the gateway's subscriptions and feeds
//! [`Bus::deliveries`]. The subscriber keeps its own list of wanted channels and subscribes
//! them all again after every reconnect, so subscriptions survive a Redis restart even when
//! they were asked for while Redis was down. While Redis is unreachable, publish and subscribe
//! fail at once instead of queueing: writes still commit, and clients catch up by seq.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use fred::{
    clients::{Client, SubscriberClient},
    interfaces::{ClientLike, EventInterface, PubsubInterface},
    types::{
        Builder,
        config::{Config as FredConfig, ReconnectPolicy},
    },
};
use tokio::sync::broadcast;

use super::{Bus, Envelope, Topic};
use crate::error::DomainError;

/// Capacity of the delivery channel to the fan-out (and of fred's own message channel).
const DELIVERY_CAPACITY: usize = 65_536;

pub struct RedisBus {
    publisher: Client,
    /// `None` in a process that only publishes (the API tier).
    subscriber: Option<SubscriberClient>,
    /// Channel name prefix (`REDIS_CHANNEL_PREFIX`).
    prefix: String,
    /// SPUBLISH/SSUBSCRIBE instead of PUBLISH/SUBSCRIBE.
    sharded: bool,
    /// Channels this process wants, re-subscribed after each reconnect.
    wanted: Arc<Mutex<HashSet<String>>>,
    deliveries: broadcast::Sender<Arc<Envelope>>,
    /// Told when deliveries may have been missed: after each reconnect, once every wanted
    /// channel was subscribed again, and when the reader fell behind fred's channel.
    resubscribed: broadcast::Sender<()>,
}

impl RedisBus {
    /// Connects the publisher, and the subscriber when `subscribe` (gateways): retrying forever
    /// in the background if Redis is down at start.
    pub async fn connect(url: &str, prefix: &str, sharded: Option<bool>, subscribe: bool) -> Result<Self, DomainError> {
        let config = FredConfig::from_url(url).map_err(|e| DomainError::Unavailable(format!("REDIS_URL: {e}")))?;
        let sharded = sharded.unwrap_or_else(|| config.server.is_clustered());
        let mut builder = Builder::from_config(config);
        builder
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .with_performance_config(|p| {
                p.default_command_timeout = Duration::from_secs(2);
            })
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(2);
                c.max_command_attempts = 1;
            });
        // The publisher's own event channels are never read: fred's small default suffices.
        let publisher = builder.build().map_err(|e| DomainError::Unavailable(e.to_string()))?;
        publisher
            .init()
            .await
            .map_err(|e| DomainError::Unavailable(format!("REDIS_URL: cannot connect: {e}")))?;
        let subscriber = if subscribe {
            // fred preallocates every slot of its channels: this capacity is a fixed cost of
            // about 10 MB, and what absorbs a burst while the fan-out is busy.
            builder.with_performance_config(|p| p.broadcast_channel_capacity = DELIVERY_CAPACITY);
            let subscriber = builder
                .build_subscriber_client()
                .map_err(|e| DomainError::Unavailable(e.to_string()))?;
            subscriber
                .init()
                .await
                .map_err(|e| DomainError::Unavailable(format!("REDIS_URL: cannot connect: {e}")))?;
            Some(subscriber)
        } else {
            None
        };
        let (deliveries, _) = broadcast::channel(if subscribe { DELIVERY_CAPACITY } else { 1 });
        let (resubscribed, _) = broadcast::channel(16);
        let bus = Self {
            publisher,
            subscriber,
            prefix: prefix.to_owned(),
            sharded,
            wanted: Arc::new(Mutex::new(HashSet::new())),
            deliveries,
            resubscribed,
        };
        if let Some(subscriber) = &bus.subscriber {
            bus.forward_messages(subscriber);
            bus.resubscribe_on_reconnect(subscriber);
        }
        Ok(bus)
    }

    /// Redis messages -> envelopes on the delivery channel.
    fn forward_messages(&self, subscriber: &SubscriberClient) {
        let mut messages = subscriber.message_rx();
        let deliveries = self.deliveries.clone();
        let missed = self.resubscribed.clone();
        tokio::spawn(async move {
            loop {
                match messages.recv().await {
                    Ok(message) => {
                        let Some(bytes) = message.value.as_bytes() else {
                            continue;
                        };
                        match serde_json::from_slice::<Envelope>(bytes) {
                            Ok(envelope) => {
                                if deliveries.send(Arc::new(envelope)).is_err() {
                                    tracing::trace!("no fan-out listening");
                                }
                            }
                            Err(e) => tracing::warn!(error = %e, channel = %message.channel, "unreadable bus message"),
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "Redis messages dropped: the bus reader fell behind");
                        // The fan-out fetches what it missed from the store.
                        if missed.send(()).is_err() {
                            tracing::trace!("no fan-out listening");
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }

    fn resubscribe_on_reconnect(&self, subscriber: &SubscriberClient) {
        let mut reconnects = subscriber.reconnect_rx();
        let subscriber = subscriber.clone();
        let wanted = self.wanted.clone();
        let sharded = self.sharded;
        let resubscribed = self.resubscribed.clone();
        tokio::spawn(async move {
            loop {
                match reconnects.recv().await {
                    Ok(server) => {
                        let channels: Vec<String> =
                            wanted.lock().map(|w| w.iter().cloned().collect()).unwrap_or_default();
                        tracing::info!(%server, channels = channels.len(), "Redis reconnected; subscribing again");
                        for chunk in channels.chunks(1_000) {
                            let result = if sharded {
                                subscriber.ssubscribe(chunk.to_vec()).await
                            } else {
                                subscriber.subscribe(chunk.to_vec()).await
                            };
                            if let Err(e) = result {
                                tracing::warn!(error = %e, "re-subscribing after a reconnect failed");
                            }
                        }
                        if resubscribed.send(()).is_err() {
                            tracing::trace!("no fan-out listening for reconnects");
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }

    fn names(&self, topics: &[Topic]) -> Vec<String> {
        topics.iter().map(|t| t.channel_name(&self.prefix)).collect()
    }

    fn down(&self) -> Option<DomainError> {
        let connected = match &self.subscriber {
            Some(subscriber) => subscriber.is_connected(),
            None => self.publisher.is_connected(),
        };
        (!connected).then(|| DomainError::Unavailable("Redis is not connected".into()))
    }

    fn subscriber(&self) -> Result<&SubscriberClient, DomainError> {
        self.subscriber
            .as_ref()
            .ok_or_else(|| DomainError::Internal("this process publishes only; it cannot subscribe".into()))
    }
}

#[async_trait::async_trait]
impl Bus for RedisBus {
    async fn publish(&self, envelope: Envelope) -> Result<(), DomainError> {
        if !self.publisher.is_connected() {
            return Err(DomainError::Unavailable("Redis is not connected".into()));
        }
        let channel = envelope.topic.channel_name(&self.prefix);
        let payload = serde_json::to_string(&envelope).map_err(|e| DomainError::Internal(e.to_string()))?;
        let result: Result<i64, _> = if self.sharded {
            self.publisher.spublish(channel, payload).await
        } else {
            self.publisher.publish(channel, payload).await
        };
        result
            .map(|_| ())
            .map_err(|e| DomainError::Unavailable(format!("Redis publish: {e}")))
    }

    async fn subscribe(&self, topics: &[Topic]) -> Result<(), DomainError> {
        let subscriber = self.subscriber()?;
        let names = self.names(topics);
        if let Ok(mut wanted) = self.wanted.lock() {
            wanted.extend(names.iter().cloned());
        }
        if let Some(e) = self.down() {
            return Err(e);
        }
        let result = if self.sharded {
            subscriber.ssubscribe(names).await
        } else {
            subscriber.subscribe(names).await
        };
        result.map_err(|e| DomainError::Unavailable(format!("Redis subscribe: {e}")))
    }

    async fn unsubscribe(&self, topics: &[Topic]) -> Result<(), DomainError> {
        let subscriber = self.subscriber()?;
        let names = self.names(topics);
        if let Ok(mut wanted) = self.wanted.lock() {
            for name in &names {
                wanted.remove(name);
            }
        }
        if let Some(e) = self.down() {
            // Nothing to undo on a dead connection: the reconnect subscribes `wanted` only.
            return Err(e);
        }
        let result = if self.sharded {
            subscriber.sunsubscribe(names).await
        } else {
            subscriber.unsubscribe(names).await
        };
        result.map_err(|e| DomainError::Unavailable(format!("Redis unsubscribe: {e}")))
    }

    fn deliveries(&self) -> broadcast::Receiver<Arc<Envelope>> {
        self.deliveries.subscribe()
    }

    fn reconnections(&self) -> Option<broadcast::Receiver<()>> {
        Some(self.resubscribed.subscribe())
    }

    async fn ping(&self) -> Result<(), DomainError> {
        if let Some(e) = self.down() {
            return Err(e);
        }
        let pong: Result<String, _> = self.publisher.ping(None).await;
        pong.map(|_| ())
            .map_err(|e| DomainError::Unavailable(format!("Redis ping: {e}")))
    }
}
