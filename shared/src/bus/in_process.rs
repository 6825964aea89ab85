//! The standalone bus: one process holds every socket, so every envelope is delivered and
//! subscriptions are only bookkeeping.

use std::sync::Arc;

use tokio::sync::broadcast;

use super::{Bus, Envelope, Topic};
use crate::error::DomainError;

pub struct InProcessBus {
    /// Fan-out to the local gateway; a lagging receiver is told how many it missed and
    /// catches up from the store.
    sender: broadcast::Sender<Arc<Envelope>>,
}

impl InProcessBus {
    pub fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity);
        Self { sender }
    }
}

impl Default for InProcessBus {
    fn default() -> Self {
        Self::new(16_384)
    }
}

#[async_trait::async_trait]
impl Bus for InProcessBus {
    async fn publish(&self, envelope: Envelope) -> Result<(), DomainError> {
        // No receiver (no gateway in this process) is not an error: nobody is listening.
        if self.sender.send(Arc::new(envelope)).is_err() {
            tracing::trace!("event published with no local listener");
        }
        Ok(())
    }

    async fn subscribe(&self, _topics: &[Topic]) -> Result<(), DomainError> {
        Ok(())
    }

    async fn unsubscribe(&self, _topics: &[Topic]) -> Result<(), DomainError> {
        Ok(())
    }

    fn deliveries(&self) -> broadcast::Receiver<Arc<Envelope>> {
        self.sender.subscribe()
    }

    async fn ping(&self) -> Result<(), DomainError> {
        Ok(())
    }
}
