//! The order of one group's messages on this gateway, as a state machine with no I/O and no
//! clock of its own: the fan-out feeds it what the bus delivers, what the store answers and the
//! time, and sends what it returns. It owns these invariants, and these functions uphold them:
//!
//! | Invariant | Upheld by |
//! |---|---|
//! | A seq goes to the room at most once | [`Sequencer::accept`] and every release drop seqs up to `last` |
//! | Seqs go out in increasing order with no gap | only `last + 1` is ever released |
//! | A message that arrives early waits for the ones before it | [`Sequencer::accept`] holds it |
//! | A gap is fetched from the store, one fetch at a time | [`Sequencer::gap_to_fill`], [`Sequencer::apply_fill`] |
//! | A gap over [`MAX_GAP_FILL`] is skipped, never fetched | [`Sequencer::gap_to_fill`] |
//! | A gap the store cannot fill is skipped, never waited on forever | [`Sequencer::apply_fill`] |
//!
//! A skipped gap loses nothing: the sockets see the jump in seq and catch up from the store
//! themselves (`syncGroups`), paced by their own acks.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use community_chat_shared::domain::model::Message;

/// Most messages held per group before the gap is fetched without waiting any longer.
const MAX_HELD: usize = 1_000;
/// Largest gap fetched from the store and sent to the room. A larger one is skipped: the
/// sockets catch up themselves instead of taking a burst that would overflow their queues.
pub(crate) const MAX_GAP_FILL: i64 = 100;

/// What the sequencer orders: anything with a group seq.
pub(crate) trait Sequenced {
    fn seq(&self) -> i64;
}

impl Sequenced for Message {
    fn seq(&self) -> i64 {
        self.seq
    }
}

/// One group's ordering state, from subscribe to unsubscribe.
#[derive(Debug)]
pub(crate) struct Sequencer<M = Message> {
    /// Last seq sent to the room.
    last: i64,
    /// Highest seq known to be committed (from the store's tail), to fetch up to.
    tail: i64,
    /// Messages that arrived ahead of `last + 1`.
    held: BTreeMap<i64, M>,
    /// When the oldest held message arrived (reset whenever held messages go out).
    held_since: Option<Instant>,
    /// A store fetch for the gap is under way: no second one starts.
    fetching: bool,
}

/// What one input let out: the messages to send, and what was dropped or given up on.
#[derive(Debug)]
#[must_use]
pub(crate) struct Released<M = Message> {
    /// To send to the room, in this order: increasing seqs with no gap.
    pub messages: Vec<M>,
    /// Messages dropped because their seq had already gone out.
    pub duplicates: u64,
    /// How many seqs were given up on, if any: the room jumps over them.
    pub skipped: Option<i64>,
}

impl<M> Default for Released<M> {
    fn default() -> Self {
        Self {
            messages: Vec::new(),
            duplicates: 0,
            skipped: None,
        }
    }
}

/// What to do about a group's missing seqs.
#[derive(Debug)]
#[must_use]
pub(crate) enum Gap<M = Message> {
    /// Read up to `count` messages after seq `after` from the store, and give the answer to
    /// [`Sequencer::apply_fill`].
    Fetch { after: i64, count: u64 },
    /// Nothing to fetch: the gap had closed, or was too large and was skipped.
    Settled(Released<M>),
}

impl<M: Sequenced> Sequencer<M> {
    /// A group whose messages up to `last` were sent (or committed before this gateway
    /// watched the group).
    pub(crate) fn starting_after(last: i64) -> Self {
        Self {
            last,
            tail: last,
            held: BTreeMap::new(),
            held_since: None,
            fetching: false,
        }
    }

    /// Messages waiting for a missing seq.
    pub(crate) fn held(&self) -> usize {
        self.held.len()
    }

    /// A message from the bus: out at once if it is next, dropped if already sent, else held
    /// until the gap before it closes.
    pub(crate) fn accept(&mut self, message: M, now: Instant) -> Released<M> {
        let seq = message.seq();
        if seq <= self.last {
            return Released {
                duplicates: 1,
                ..Released::default()
            };
        }
        if seq == self.last + 1 {
            self.last = seq;
            let mut out = Released {
                messages: vec![message],
                ..Released::default()
            };
            self.release_into(&mut out, now);
            return out;
        }
        self.held.insert(seq, message);
        self.held_since.get_or_insert(now);
        Released::default()
    }

    /// The group's seq when this gateway (re)subscribed to it. The sequence only moves
    /// forward: a group started by a message before its seed (the seed read failed before, or
    /// a stray delivery) keeps what it sent.
    pub(crate) fn seeded(&mut self, seq: i64, now: Instant) -> Released<M> {
        if seq <= self.last {
            return Released::default();
        }
        self.last = seq;
        self.tail = self.tail.max(seq);
        self.release(now)
    }

    /// The store's last seq, read after the bus may have missed events (a reconnect, or the
    /// fan-out fell behind). `true`: a fill should start now ([`Sequencer::gap_to_fill`]).
    pub(crate) fn tail_read(&mut self, seq: i64) -> bool {
        if seq <= self.last {
            return false;
        }
        self.tail = self.tail.max(seq);
        !self.fetching
    }

    /// Whether the gap should be fetched now: a message has been held for `delay`, too many
    /// are held, or a known tail is not reached yet (a fill stopped at a held message that
    /// went out since).
    pub(crate) fn fill_due(&self, now: Instant, delay: Duration) -> bool {
        let waited = self.held_since.is_some_and(|t| now.duration_since(t) >= delay);
        let behind_tail = self.held.is_empty() && self.tail > self.last;
        !self.fetching && (waited || behind_tail || self.held.len() >= MAX_HELD)
    }

    /// Lets out the held messages that are now in order.
    pub(crate) fn release(&mut self, now: Instant) -> Released<M> {
        let mut out = Released::default();
        self.release_into(&mut out, now);
        out
    }

    /// What is missing between the last seq sent and the first held message (or the known
    /// tail): a fetch of it, or nothing to fetch. A gap over [`MAX_GAP_FILL`] is skipped.
    pub(crate) fn gap_to_fill(&mut self, now: Instant) -> Gap<M> {
        let target = match self.held.keys().next() {
            Some(first_held) => *first_held,
            None => self.tail + 1,
        };
        let missing = target - self.last - 1;
        if missing <= 0 {
            return Gap::Settled(self.release(now));
        }
        if missing > MAX_GAP_FILL {
            self.last = target - 1;
            let mut out = self.release(now);
            out.skipped = Some(missing);
            return Gap::Settled(out);
        }
        self.fetching = true;
        Gap::Fetch {
            after: self.last,
            count: missing as u64,
        }
    }

    /// The store's answer to the last [`Gap::Fetch`]; `None` when the read failed. What it
    /// could not fill is skipped: clients catch up by seq.
    pub(crate) fn apply_fill(&mut self, fetched: Option<Vec<M>>, now: Instant) -> Released<M> {
        self.fetching = false;
        let mut out = Released::default();
        match fetched {
            Some(messages) => {
                let before = self.last;
                for message in messages {
                    if message.seq() == self.last + 1 {
                        self.last = message.seq();
                        out.messages.push(message);
                    }
                }
                if self.last == before {
                    // The store had nothing after `last`: the tail read was ahead of it; stop.
                    self.tail = self.last;
                }
            }
            // Not retried on a timer while the store fails: the next message retries.
            None => self.tail = self.last,
        }
        if let Some(first) = self.held.keys().next().copied()
            && first > self.last + 1
        {
            out.skipped = Some(first - self.last - 1);
            self.last = first - 1;
        }
        self.release_into(&mut out, now);
        out
    }

    fn release_into(&mut self, out: &mut Released<M>, now: Instant) {
        while let Some(entry) = self.held.first_entry() {
            let seq = *entry.key();
            if seq <= self.last {
                entry.remove();
                out.duplicates += 1;
            } else if seq == self.last + 1 {
                out.messages.push(entry.remove());
                self.last = seq;
            } else {
                break;
            }
        }
        self.held_since = if self.held.is_empty() { None } else { Some(now) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message that is only its seq.
    impl Sequenced for i64 {
        fn seq(&self) -> i64 {
            *self
        }
    }

    const DELAY: Duration = Duration::from_millis(200);

    fn sent(released: Released<i64>) -> Vec<i64> {
        released.messages
    }

    fn settled(gap: Gap<i64>) -> Released<i64> {
        match gap {
            Gap::Settled(released) => released,
            Gap::Fetch { after, count } => panic!("expected no fetch, got one of {count} after {after}"),
        }
    }

    #[test]
    fn messages_in_order_go_out_at_once() {
        let now = Instant::now();
        let mut s = Sequencer::<i64>::starting_after(4);
        assert_eq!(sent(s.accept(5, now)), vec![5]);
        assert_eq!(sent(s.accept(6, now)), vec![6]);
        assert_eq!(s.held(), 0);
        assert!(!s.fill_due(now + DELAY, DELAY), "nothing missing, nothing to fetch");
    }

    #[test]
    fn a_seq_already_sent_is_dropped() {
        let now = Instant::now();
        let mut s = Sequencer::<i64>::starting_after(4);
        let seed_era = s.accept(4, now);
        assert!(seed_era.messages.is_empty());
        assert_eq!(seed_era.duplicates, 1, "at or below the seed was committed before");
        assert_eq!(sent(s.accept(5, now)), vec![5]);
        let again = s.accept(5, now);
        assert!(again.messages.is_empty());
        assert_eq!(again.duplicates, 1);
    }

    #[test]
    fn an_early_message_is_held_until_the_one_before_it_arrives() {
        let now = Instant::now();
        let mut s = Sequencer::<i64>::starting_after(0);
        assert!(sent(s.accept(3, now)).is_empty());
        assert!(sent(s.accept(2, now)).is_empty());
        assert_eq!(s.held(), 2);
        assert!(!s.fill_due(now, DELAY), "a gap is waited for before it is fetched");
        assert_eq!(sent(s.accept(1, now)), vec![1, 2, 3], "released in seq order");
        assert_eq!(s.held(), 0);
        assert!(!s.fill_due(now + DELAY, DELAY), "the wait ends with the gap");
    }

    #[test]
    fn a_held_gap_is_fetched_after_the_delay_then_the_held_messages_follow() {
        let now = Instant::now();
        let mut s = Sequencer::<i64>::starting_after(0);
        let _ = s.accept(4, now);
        assert!(!s.fill_due(now + DELAY / 2, DELAY));
        assert!(s.fill_due(now + DELAY, DELAY));
        let Gap::Fetch { after, count } = s.gap_to_fill(now + DELAY) else {
            panic!("a gap of three should be fetched");
        };
        assert_eq!((after, count), (0, 3));
        assert!(!s.fill_due(now + DELAY * 10, DELAY), "one fetch at a time");
        let filled = s.apply_fill(Some(vec![1, 2, 3]), now + DELAY);
        assert_eq!(filled.messages, vec![1, 2, 3, 4]);
        assert_eq!(filled.skipped, None);
        assert_eq!(sent(s.accept(5, now + DELAY)), vec![5]);
    }

    #[test]
    fn too_many_held_messages_fetch_the_gap_without_waiting() {
        let now = Instant::now();
        let mut s = Sequencer::<i64>::starting_after(0);
        for seq in 2..2 + MAX_HELD as i64 {
            let _ = s.accept(seq, now);
        }
        assert!(s.fill_due(now, DELAY));
    }

    #[test]
    fn a_fill_that_finds_nothing_skips_to_the_first_held_message() {
        let now = Instant::now();
        let mut s = Sequencer::<i64>::starting_after(0);
        let _ = s.accept(3, now);
        assert!(matches!(s.gap_to_fill(now), Gap::Fetch { after: 0, count: 2 }));
        let out = s.apply_fill(Some(Vec::new()), now);
        assert_eq!(out.skipped, Some(2), "1 and 2 are given up on");
        assert_eq!(out.messages, vec![3]);
        assert_eq!(sent(s.accept(4, now)), vec![4]);
    }

    #[test]
    fn a_failed_fill_skips_the_gap_and_stops_chasing_the_tail() {
        let now = Instant::now();
        let mut s = Sequencer::<i64>::starting_after(0);
        let _ = s.accept(3, now);
        assert!(s.tail_read(5));
        assert!(matches!(s.gap_to_fill(now), Gap::Fetch { after: 0, count: 2 }));
        let out = s.apply_fill(None, now);
        assert_eq!(out.skipped, Some(2));
        assert_eq!(out.messages, vec![3]);
        assert!(
            !s.fill_due(now + DELAY, DELAY),
            "not retried on a timer while the store fails"
        );
        assert_eq!(sent(s.accept(4, now)), vec![4], "the next message goes on from there");
    }

    #[test]
    fn a_tail_the_store_does_not_have_yet_is_not_chased() {
        let now = Instant::now();
        let mut s = Sequencer::<i64>::starting_after(2);
        assert!(s.tail_read(4));
        assert!(matches!(s.gap_to_fill(now), Gap::Fetch { after: 2, count: 2 }));
        let out = s.apply_fill(Some(Vec::new()), now);
        assert!(out.messages.is_empty() && out.skipped.is_none());
        assert!(!s.fill_due(now + DELAY, DELAY));
    }

    #[test]
    fn a_gap_over_the_cap_is_skipped_not_fetched() {
        let now = Instant::now();
        let mut s = Sequencer::<i64>::starting_after(0);
        let far = MAX_GAP_FILL + 2;
        let _ = s.accept(far, now);
        let out = settled(s.gap_to_fill(now + DELAY));
        assert_eq!(out.skipped, Some(MAX_GAP_FILL + 1));
        assert_eq!(out.messages, vec![far], "the room jumps to the held message");
        assert_eq!(sent(s.accept(far + 1, now)), vec![far + 1]);

        // The same cap holds for a tail read far ahead with nothing held.
        assert!(s.tail_read(far + 1 + MAX_GAP_FILL + 5));
        let out = settled(s.gap_to_fill(now));
        assert_eq!(out.skipped, Some(MAX_GAP_FILL + 5));
        assert!(out.messages.is_empty());
        assert!(!s.fill_due(now, DELAY));
    }

    #[test]
    fn a_gap_at_the_cap_is_fetched() {
        let now = Instant::now();
        let mut s = Sequencer::<i64>::starting_after(0);
        let _ = s.accept(MAX_GAP_FILL + 1, now);
        assert!(matches!(s.gap_to_fill(now), Gap::Fetch { after: 0, count } if count == MAX_GAP_FILL as u64));
    }

    #[test]
    fn a_fill_that_overlaps_held_messages_sends_each_seq_once() {
        let now = Instant::now();
        let mut s = Sequencer::<i64>::starting_after(0);
        let _ = s.accept(3, now);
        let _ = s.accept(4, now);
        assert!(matches!(s.gap_to_fill(now), Gap::Fetch { after: 0, count: 2 }));
        // The store has committed more than the fetch asked for by the time it reads.
        let out = s.apply_fill(Some(vec![1, 2, 3]), now);
        assert_eq!(out.messages, vec![1, 2, 3, 4]);
        assert_eq!(out.duplicates, 1, "the held copy of 3 is dropped");
    }

    #[test]
    fn a_reconnect_fetches_what_the_bus_missed_and_the_live_stream_resumes() {
        let now = Instant::now();
        let mut s = Sequencer::<i64>::starting_after(0);
        assert_eq!(sent(s.accept(1, now)), vec![1]);
        // Redis went away while 2..=4 were published; after the reconnect the tail is re-read.
        assert!(!s.tail_read(1), "a tail already reached needs no fetch");
        assert!(s.tail_read(4));
        assert!(matches!(s.gap_to_fill(now), Gap::Fetch { after: 1, count: 3 }));
        // Live 5 arrives while the fetch runs: held, not sent ahead of 2..=4.
        assert!(sent(s.accept(5, now)).is_empty());
        assert!(!s.tail_read(5), "a second tail read does not start a second fetch");
        assert_eq!(sent(s.apply_fill(Some(vec![2, 3, 4]), now)), vec![2, 3, 4, 5]);
        assert!(!s.fill_due(now + DELAY, DELAY));
        assert_eq!(sent(s.accept(6, now)), vec![6]);
    }

    #[test]
    fn a_late_seed_only_moves_the_sequence_forward() {
        let now = Instant::now();
        // Started by a stray message before its seed came.
        let mut s = Sequencer::<i64>::starting_after(9);
        assert_eq!(sent(s.accept(10, now)), vec![10]);
        let _ = s.accept(13, now);
        assert!(
            sent(s.seeded(8, now)).is_empty(),
            "a seed behind the sequence changes nothing"
        );
        let out = s.seeded(12, now);
        assert_eq!(
            out.messages,
            vec![13],
            "committed up to 12 before the subscribe: 13 is next"
        );
        assert_eq!(sent(s.accept(14, now)), vec![14]);
    }
}
