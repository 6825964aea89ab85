//! Reference-counted bus subscriptions. A gateway subscribes to a topic when its first local
//! socket needs it and unsubscribes when the last one lets go; it never subscribes to
//! everything. One task owns the counts, so subscribe and unsubscribe calls reach the bus in
//! the order the sockets asked, and every request queued meanwhile is applied as one batch.
//! Before it subscribes to groups it reads where they stand and tells the fan-out, through
//! [`crate::control`], which it never waits on.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering as AtomicOrdering},
    },
    time::Duration,
};

use community_chat_shared::{bus::Topic, domain::EventFeed};
use tokio::sync::{mpsc, oneshot};

use crate::control::ControlSender;

/// Most requests waiting for the subscription task; senders wait when it is full.
const QUEUE_CAPACITY: usize = 65_536;
/// Most requests folded into one round of bus calls.
const MAX_BATCH: usize = 4_096;
/// How often a subscribe call that failed while the bus was up is tried again.
const RETRY_EVERY: Duration = Duration::from_secs(1);

enum Request {
    /// Count one more user of each topic; answer once the bus has been asked to subscribe.
    Acquire(Vec<Topic>, oneshot::Sender<()>),
    /// Count one user less of each topic.
    Release(Vec<Topic>),
}

#[derive(Clone)]
pub struct Subscriptions {
    requests: mpsc::Sender<Request>,
    /// Topics subscribed on the bus right now (a metric).
    pub active: Arc<AtomicUsize>,
}

impl Subscriptions {
    /// Starts the task that owns the counts; it ends when every handle is dropped.
    pub(crate) fn start(bus: EventFeed, control: ControlSender) -> Self {
        let (requests, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let active = Arc::new(AtomicUsize::new(0));
        tokio::spawn(run(bus, control, receiver, active.clone()));
        Self { requests, active }
    }

    /// Returns once the gateway is subscribed to every topic (or the bus reported an error:
    /// the bus retries on reconnect, and clients catch up by seq).
    pub async fn acquire(&self, topics: Vec<Topic>) {
        if topics.is_empty() {
            return;
        }
        let (done, wait) = oneshot::channel();
        // Either error means the task ended (shutdown): nothing to wait for.
        if self.requests.send(Request::Acquire(topics, done)).await.is_err() || wait.await.is_err() {
            tracing::debug!("subscription task has ended; acquire not awaited");
        }
    }

    /// Requests waiting for the subscription task (a metric).
    pub fn queued(&self) -> usize {
        QUEUE_CAPACITY - self.requests.capacity()
    }

    pub async fn release(&self, topics: Vec<Topic>) {
        if !topics.is_empty() && self.requests.send(Request::Release(topics)).await.is_err() {
            tracing::debug!("subscription task has ended; release ignored");
        }
    }
}

async fn run(bus: EventFeed, control: ControlSender, mut requests: mpsc::Receiver<Request>, active: Arc<AtomicUsize>) {
    let mut counts: HashMap<Topic, usize> = HashMap::new();
    let mut subscribed: HashSet<Topic> = HashSet::new();
    // Topics whose subscribe call failed while the bus was up (a timeout): asked again on a
    // timer. (While it is down, the bus itself subscribes everything again on reconnect.)
    let mut retry: HashSet<Topic> = HashSet::new();
    let mut retry_tick = tokio::time::interval(RETRY_EVERY);
    retry_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            request = requests.recv() => match request {
                Some(request) => request,
                None => break,
            },
            _ = retry_tick.tick(), if !retry.is_empty() => {
                let again: Vec<Topic> = retry.drain().filter(|t| counts.contains_key(t)).collect();
                if !again.is_empty() {
                    match bus.subscribe(&again).await {
                        // What was committed while the subscription was missing is fetched.
                        Ok(()) => control.refresh(&again).await,
                        Err(e) => {
                            tracing::debug!(error = %e, topics = again.len(), "subscribe retry failed");
                            retry.extend(again);
                        }
                    }
                }
                continue;
            }
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let mut touched: HashSet<Topic> = HashSet::new();
        let mut waiting = Vec::new();
        for request in batch {
            match request {
                Request::Acquire(topics, done) => {
                    for topic in topics {
                        *counts.entry(topic.clone()).or_default() += 1;
                        touched.insert(topic);
                    }
                    waiting.push(done);
                }
                Request::Release(topics) => {
                    for topic in topics {
                        if let Some(count) = counts.get_mut(&topic) {
                            *count -= 1;
                            if *count == 0 {
                                counts.remove(&topic);
                            }
                        }
                        touched.insert(topic);
                    }
                }
            }
        }
        let (mut subscribe, mut unsubscribe) = (Vec::new(), Vec::new());
        for topic in touched {
            match (counts.contains_key(&topic), subscribed.contains(&topic)) {
                (true, false) => subscribe.push(topic),
                (false, true) => unsubscribe.push(topic),
                _ => {}
            }
        }
        if !unsubscribe.is_empty() {
            if let Err(e) = bus.unsubscribe(&unsubscribe).await {
                tracing::warn!(error = %e, topics = unsubscribe.len(), "unsubscribe failed");
            }
            for topic in &unsubscribe {
                subscribed.remove(topic);
                retry.remove(topic);
            }
            control.forget(&unsubscribe);
        }
        if !subscribe.is_empty() {
            // Where each group's ordering starts is read before subscribing: whatever commits
            // from then on either arrives on the bus or is fetched as a gap.
            control.seed(&subscribe).await;
            if let Err(e) = bus.subscribe(&subscribe).await {
                tracing::warn!(error = %e, topics = subscribe.len(), "subscribe failed; retried");
                retry.extend(subscribe.iter().cloned());
            }
            subscribed.extend(subscribe);
        }
        active.store(subscribed.len(), AtomicOrdering::Relaxed);
        for done in waiting {
            if done.send(()).is_err() {
                tracing::trace!("a socket left before its subscription was ready");
            }
        }
    }
}
