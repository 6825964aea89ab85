//! What the gateway keeps per socket: who it is, which group rooms it is in (so a disconnect
//! releases exactly those subscriptions, and reads that need membership can be shown it:
//! [`InRoom`]), where it stands in each group's seq, and its rate limits.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::value::RawValue;

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
    /// Set by the disconnect (under the `groups` lock): no room is added after it, so nothing
    /// is acquired that the disconnect will not release.
    closed: std::sync::atomic::AtomicBool,
    /// Token bucket of `sendGroupMessage`.
    sends: Mutex<TokenBucket>,
    /// Last relayed typing state and time per group.
    typing: Mutex<HashMap<GroupId, (bool, Instant)>>,
    /// Per group: the last seq sent to this socket, and live messages held while a catch-up of
    /// that group runs. This is what makes "never twice, never out of order" hold per socket.
    cursors: Mutex<HashMap<GroupId, Cursor>>,
}

/// Where one socket stands in one group.
#[derive(Default)]
struct Cursor {
    /// Highest seq sent to this socket (0: none yet).
    sent: i64,
    /// `Some` while a catch-up runs: live messages wait here, to go after it.
    held: Option<Vec<(i64, Arc<RawValue>)>>,
    /// While catch-ups run: the lowest `afterSeq` among them. Everything after it reaches the
    /// socket in order, so a request from there on (a client's retry while the first is still
    /// sending) is already covered and must not re-send what went out meanwhile.
    catching_up_from: Option<i64>,
}

/// Proof that a socket is in a group's room, and so that the domain made its caller a member
/// of the group ([`crate::room_membership`]). Only [`Session::in_room`] gives one out; reads
/// that take it check nothing again.
pub struct InRoom<'a> {
    org: &'a OrgId,
    group: GroupId,
}

impl InRoom<'_> {
    pub fn org(&self) -> &OrgId {
        self.org
    }

    pub fn group(&self) -> GroupId {
        self.group
    }
}

/// What to do with a live message for this socket.
pub enum Gate {
    Send,
    /// Already sent (a catch-up got it first), or held until the catch-up ends.
    Skip,
}

impl Session {
    pub fn new(caller: Caller, sends_per_second: u32) -> Self {
        Self {
            caller,
            groups: Mutex::new(HashSet::new()),
            closed: std::sync::atomic::AtomicBool::new(false),
            sends: Mutex::new(TokenBucket::new(sends_per_second)),
            typing: Mutex::new(HashMap::new()),
            cursors: Mutex::new(HashMap::new()),
        }
    }

    /// Decides whether a live message goes out now; records it as sent if so.
    pub fn gate_live(&self, group: GroupId, seq: i64, payload: &Arc<RawValue>) -> Gate {
        let mut cursors = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
        let cursor = cursors.entry(group).or_default();
        if let Some(held) = &mut cursor.held {
            held.push((seq, payload.clone()));
            return Gate::Skip;
        }
        if seq <= cursor.sent {
            return Gate::Skip;
        }
        cursor.sent = seq;
        Gate::Send
    }

    /// Starts a catch-up of `group` from `after`: live messages are held from now on, and
    /// everything after `after` counts as not yet sent (the client says it has only up to
    /// `after`, e.g. it saw a gap).
    pub fn begin_catch_up(&self, group: GroupId, after: i64) {
        let mut cursors = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
        let cursor = cursors.entry(group).or_default();
        match cursor.catching_up_from {
            // A running catch-up already sends everything after `from`.
            Some(from) if after >= from => {}
            // The client has exactly up to `after`: what came before is not sent again (also
            // a held live copy of `after` itself), everything after it is.
            _ => cursor.sent = after,
        }
        cursor.catching_up_from = Some(cursor.catching_up_from.map_or(after, |from| from.min(after)));
        cursor.held.get_or_insert_with(Vec::new);
    }

    /// Whether a caught-up message should be sent (not sent before); records it if so.
    pub fn gate_caught_up(&self, group: GroupId, seq: i64) -> bool {
        let mut cursors = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
        let cursor = cursors.entry(group).or_default();
        if seq <= cursor.sent {
            return false;
        }
        cursor.sent = seq;
        true
    }

    /// Ends a catch-up: returns the held live messages not yet sent, in seq order, and marks
    /// them sent.
    pub fn end_catch_up(&self, group: GroupId) -> Vec<Arc<RawValue>> {
        let mut cursors = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
        let cursor = cursors.entry(group).or_default();
        cursor.catching_up_from = None;
        let mut held = cursor.held.take().unwrap_or_default();
        held.sort_by_key(|(seq, _)| *seq);
        let mut out = Vec::with_capacity(held.len());
        for (seq, payload) in held {
            if seq > cursor.sent {
                cursor.sent = seq;
                out.push(payload);
            }
        }
        out
    }

    /// Forgets the cursor of a group the socket left.
    pub fn forget_cursor(&self, group: GroupId) {
        self.cursors.lock().unwrap_or_else(|p| p.into_inner()).remove(&group);
    }

    pub fn org(&self) -> &OrgId {
        &self.caller.org
    }

    /// Records the rooms joined; returns the ones that are new for this socket.
    pub fn add_groups(&self, ids: impl IntoIterator<Item = GroupId>) -> Vec<GroupId> {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        if self.closed.load(std::sync::atomic::Ordering::Relaxed) {
            return Vec::new();
        }
        ids.into_iter().filter(|id| groups.insert(*id)).collect()
    }

    /// Forgets a room; `true` if the socket was in it.
    pub fn remove_group(&self, id: GroupId) -> bool {
        self.groups.lock().unwrap_or_else(|p| p.into_inner()).remove(&id)
    }

    pub fn in_group(&self, id: GroupId) -> bool {
        self.groups.lock().unwrap_or_else(|p| p.into_inner()).contains(&id)
    }

    /// The proof that this socket is in the group's room, if it is.
    pub fn in_room(&self, group: GroupId) -> Option<InRoom<'_>> {
        self.in_group(group).then(|| InRoom { org: self.org(), group })
    }

    /// Empties the room set (disconnect) and returns the topics to release: the groups and
    /// the user's own topic.
    pub fn take_all_topics(&self) -> Vec<Topic> {
        let groups = {
            let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
            self.closed.store(true, std::sync::atomic::Ordering::Relaxed);
            std::mem::take(&mut *groups)
        };
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

#[cfg(test)]
mod cursor_tests {
    use super::*;
    use community_chat_shared::ids::{Email, OrgId};

    fn session() -> Session {
        let caller = Caller {
            org: OrgId::parse("o").unwrap(),
            email: Email::parse("a@b.co").unwrap(),
        };
        Session::new(caller, 10)
    }

    fn raw(seq: i64) -> Arc<RawValue> {
        Arc::from(serde_json::value::to_raw_value(&seq).unwrap())
    }

    #[test]
    fn no_room_is_added_after_the_disconnect_took_them() {
        let s = session();
        let (a, b) = (GroupId::new_v7(), GroupId::new_v7());
        assert_eq!(s.add_groups([a]), vec![a]);
        let released = s.take_all_topics();
        assert_eq!(released.len(), 2, "the group and the user topic");
        // An addedToGroup that raced the disconnect acquires nothing the disconnect missed.
        assert!(s.add_groups([b]).is_empty());
        assert!(!s.in_group(b));
    }

    #[test]
    fn only_a_socket_in_the_room_can_show_it_is_in_the_room() {
        let s = session();
        let g = GroupId::new_v7();
        assert!(s.in_room(g).is_none());
        s.add_groups([g]);
        assert!(s.in_room(g).is_some_and(|r| r.group() == g && r.org() == s.org()));
        assert!(s.remove_group(g));
        assert!(s.in_room(g).is_none(), "leaving the room takes the proof away");
    }

    #[test]
    fn live_messages_go_once_in_order() {
        let s = session();
        let g = GroupId::new_v7();
        assert!(matches!(s.gate_live(g, 1, &raw(1)), Gate::Send));
        assert!(
            matches!(s.gate_live(g, 1, &raw(1)), Gate::Skip),
            "a duplicate is skipped"
        );
        assert!(matches!(s.gate_live(g, 2, &raw(2)), Gate::Send));
    }

    #[test]
    fn overlapping_catch_ups_send_each_seq_once() {
        let s = session();
        let g = GroupId::new_v7();
        // A catch-up from 5 is under way and has sent 6..=8 when the client, not having seen
        // them yet, asks again from 5 (a retry): nothing is sent twice.
        s.begin_catch_up(g, 5);
        let first: Vec<i64> = (6..=8).filter(|seq| s.gate_caught_up(g, *seq)).collect();
        assert_eq!(first, vec![6, 7, 8]);
        s.begin_catch_up(g, 5);
        let second: Vec<i64> = (6..=10).filter(|seq| s.gate_caught_up(g, *seq)).collect();
        assert_eq!(second, vec![9, 10], "the retry continues where the first stands");
        assert!(s.end_catch_up(g).is_empty());
        assert!(s.end_catch_up(g).is_empty());
        assert!(matches!(s.gate_live(g, 11, &raw(11)), Gate::Send));
        // A request from further back than any running catch-up still re-sends from there.
        s.begin_catch_up(g, 20);
        s.begin_catch_up(g, 9);
        let again: Vec<i64> = (10..=11).filter(|seq| s.gate_caught_up(g, *seq)).collect();
        assert_eq!(again, vec![10, 11], "the client says it lacks 10 and 11");
        s.end_catch_up(g);
        // Once no catch-up runs, a new one from 5 re-sends after 5 (the client discarded them).
        s.begin_catch_up(g, 5);
        assert!(s.gate_caught_up(g, 6));
    }

    #[test]
    fn a_new_socket_never_gets_what_its_sync_says_it_has() {
        let s = session();
        let g = GroupId::new_v7();
        // The handshake syncs from 44; the live copy of 44 arrives during the catch-up, which
        // finds nothing newer: 44 is not sent, 45 is.
        s.begin_catch_up(g, 44);
        assert!(matches!(s.gate_live(g, 44, &raw(44)), Gate::Skip));
        assert!(matches!(s.gate_live(g, 45, &raw(45)), Gate::Skip));
        assert!(!s.gate_caught_up(g, 44));
        let released: Vec<String> = s.end_catch_up(g).iter().map(|p| p.get().to_owned()).collect();
        assert_eq!(released, vec![raw(45).get().to_owned()]);
        assert!(matches!(s.gate_live(g, 45, &raw(45)), Gate::Skip));
        assert!(matches!(s.gate_live(g, 46, &raw(46)), Gate::Send));
    }

    #[test]
    fn catch_up_seam_has_no_duplicate_and_no_gap() {
        let s = session();
        let g = GroupId::new_v7();
        assert!(matches!(s.gate_live(g, 8, &raw(8)), Gate::Send));
        // The client saw a gap (it has 5): everything after 5 is owed again.
        s.begin_catch_up(g, 5);
        // Live 9 and 10 arrive during the catch-up: held.
        assert!(matches!(s.gate_live(g, 9, &raw(9)), Gate::Skip));
        assert!(matches!(s.gate_live(g, 10, &raw(10)), Gate::Skip));
        // The store has 6..=9 at that moment.
        let sent: Vec<i64> = (6..=9).filter(|seq| s.gate_caught_up(g, *seq)).collect();
        assert_eq!(sent, vec![6, 7, 8, 9]);
        // The held 9 was already sent by the catch-up: only 10 follows.
        let after: Vec<String> = s.end_catch_up(g).iter().map(|r| r.get().to_owned()).collect();
        assert_eq!(after, vec!["10".to_owned()]);
        assert!(matches!(s.gate_live(g, 10, &raw(10)), Gate::Skip));
        assert!(matches!(s.gate_live(g, 11, &raw(11)), Gate::Send));
    }
}
