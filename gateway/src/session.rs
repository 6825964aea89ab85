//! What the gateway keeps per socket: who it is, which group rooms it is in (so a disconnect
//! releases exactly those subscriptions), and its rate limits.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
    time::{Duration, Instant},
};

use community_chat_shared::{
    auth::Caller,
    bus::Topic,
    ids::{GroupId, OrgId},
};

pub struct Session {
    pub caller: Caller,
    /// Group rooms this socket is in. A std mutex: held only for set operations, never across
    /// an await.
    groups: Mutex<HashSet<GroupId>>,
    /// Token bucket of `sendGroupMessage`.
    sends: Mutex<TokenBucket>,
    /// Last relayed typing state and time per group.
    typing: Mutex<HashMap<GroupId, (bool, Instant)>>,
}

impl Session {
    pub fn new(caller: Caller, sends_per_second: u32) -> Self {
        Self {
            caller,
            groups: Mutex::new(HashSet::new()),
            sends: Mutex::new(TokenBucket::new(sends_per_second)),
            typing: Mutex::new(HashMap::new()),
        }
    }

    pub fn org(&self) -> &OrgId {
        &self.caller.org
    }

    /// Records the rooms joined; returns the ones that are new for this socket.
    pub fn add_groups(&self, ids: impl IntoIterator<Item = GroupId>) -> Vec<GroupId> {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        ids.into_iter().filter(|id| groups.insert(*id)).collect()
    }

    /// Forgets a room; `true` if the socket was in it.
    pub fn remove_group(&self, id: GroupId) -> bool {
        self.groups.lock().unwrap_or_else(|p| p.into_inner()).remove(&id)
    }

    pub fn in_group(&self, id: GroupId) -> bool {
        self.groups.lock().unwrap_or_else(|p| p.into_inner()).contains(&id)
    }

    /// Empties the room set (disconnect) and returns the topics to release: the groups and
    /// the user's own topic.
    pub fn take_all_topics(&self) -> Vec<Topic> {
        let groups = std::mem::take(&mut *self.groups.lock().unwrap_or_else(|p| p.into_inner()));
        let mut topics: Vec<Topic> = groups.into_iter().map(|g| Topic::group(self.org(), g)).collect();
        topics.push(Topic::user(self.org(), &self.caller.email));
        topics
    }

    /// Takes one send token; `false` when the socket is over its rate.
    pub fn try_send(&self) -> bool {
        self.sends
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_take(Instant::now())
    }

    /// Whether a typing event should be relayed: always when the state changes, otherwise at
    /// most once per `throttle`.
    pub fn should_relay_typing(&self, group: GroupId, typing: bool, throttle: Duration) -> bool {
        let now = Instant::now();
        let mut last = self.typing.lock().unwrap_or_else(|p| p.into_inner());
        match last.get(&group) {
            Some((state, at)) if *state == typing && now.duration_since(*at) < throttle => false,
            _ => {
                last.insert(group, (typing, now));
                true
            }
        }
    }
}

/// Refills `rate` tokens per second up to a burst of twice the rate.
struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        Self {
            rate,
            capacity: rate * 2.0,
            tokens: rate * 2.0,
            updated: Instant::now(),
        }
    }

    fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refills() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(5);
        bucket.updated = start;
        let allowed = (0..20).filter(|_| bucket.try_take(start)).count();
        assert_eq!(allowed, 10, "burst is twice the rate");
        assert!(!bucket.try_take(start));
        assert!(bucket.try_take(start + Duration::from_millis(250)), "refills at 5/s");
    }
}
