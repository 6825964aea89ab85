//! What a connected socket does with what it receives: per (user, group) slot it keeps the last
//! seq, counts duplicates and gaps, sets a gapped message aside and has the group synced, retries
//! failed syncs with a doubling delay, records delivery latency and notes when a reconnected
//! socket has caught up.

use std::{borrow::Cow, sync::atomic::Ordering, time::Duration};

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    Clients, MAX_RECONNECT_DELAY_MS,
    wire::{EventFrame, MessageView, due_us},
};
use crate::stats::now_us;

/// How long a group whose sync failed first waits before it is synced again.
const SYNC_RETRY: Duration = Duration::from_secs(1);

/// What one connection of a socket keeps.
#[derive(Default)]
pub(super) struct Connection {
    /// `groupsSynced` has arrived on this connection.
    synced: bool,
    /// Slots with a gap being synced, and since when (bench clock).
    pending: Vec<(usize, u64)>,
    /// Groups to sync now.
    pub(super) sync_now: Vec<u32>,
    /// Groups to sync again at `retry_at` (their sync failed).
    pub(super) retry: Vec<u32>,
    pub(super) retry_at: Option<tokio::time::Instant>,
    /// `syncGroups` sent and not answered yet: ack id and groups.
    pub(super) in_flight: Vec<(u64, Vec<u32>)>,
    pub(super) next_ack: u64,
    /// Failed syncs in a row: the retry delay doubles with each (at most 5 s), randomised.
    sync_failures: u32,
}

impl Connection {
    /// Schedules the retry of the failed groups, if any and none is scheduled.
    pub(super) fn schedule_retry(&mut self) {
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

impl Clients {
    /// `43/community-chat,<id>[{ ok, data | error }]`: the answer to a `syncGroups`.
    pub(super) fn on_ack(&self, ack: &str, conn: &mut Connection) {
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

    pub(super) fn on_event(&self, user: u32, event: &str, reconnected: bool, conn: &mut Connection) {
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
