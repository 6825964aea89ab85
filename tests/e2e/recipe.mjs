// The README's client recipe, for the tests that break connections on purpose (fault.test.mjs,
// drain.test.mjs): a member app that tracks the last seq per group, sends it in the handshake
// `auth.sync`, syncs a group when a seq jumps, and moves to the other gateway when its
// connection breaks (what a load balancer does); sends retried with their clientMessageId until
// acknowledged; a group's stored history over REST; and the check that every member got every
// message of its groups exactly once and in seq order.
//
//   const m = new Member({ cluster, org, email, groups, rand });  m.connect(0);
//   m.connected, m.gateway, m.last, m.accepted, m.stats, m.violations, m.trail,
//   m.connections (one entry per socket: gw, connectedAt, and on a disconnect reason, active, at)
//   await restSend(cluster, token, org, rec, firstApi, deadline);
//   const truth = new Map([[groupId, await fullHistory(rest, groupId)]]);
//   await catchUp(members, truth);  const report = checkDelivery(members, truth);

import { io } from 'socket.io-client';

import { NS, eventually, sleep } from './helpers.mjs';

/// A send is retried (same clientMessageId) at most this often.
export const SEND_MAX_ATTEMPTS = 80;
/// Socket ack / REST answer wait per attempt.
export const ACK_TIMEOUT_MS = 5000;

/// mulberry32: a small seeded PRNG, so a failing run can be replayed with its seed.
export function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export const short = (id) => String(id).slice(-6);
export const backoff = (attempt) => Math.min(1000, 100 * attempt);

/**
 * One user's app: one socket.io connection at a time, following the README's recipe. It tracks
 * the last seq per group, sends them in the handshake `auth.sync`, syncs a group when a seq
 * jumps, and on a disconnect or a refused connect opens a new connection to the OTHER gateway
 * after a short backoff (what a load balancer does when a gateway dies).
 *
 * It checks each socket's raw stream too (README: "each socket receives a group's
 * newGroupMessage events in seq order, never the same seq twice"): a seq at or below the
 * highest one that socket already got is a violation, unless a sync of that group is
 * outstanding on the socket (a sync asks the server to send everything after `afterSeq` again).
 */
export class Member {
  constructor({ cluster, org, email, groups, rand }) {
    this.cluster = cluster;
    this.org = org;
    this.email = email;
    this.groups = groups;
    this.rand = rand;
    this.token = cluster.token(org, email, { ttlSeconds: 3600 });
    this.label = email.split('@')[0];
    /// The recipe's state: last seq accepted per group (sync from 0: every message counts).
    this.last = new Map(groups.map((g) => [g, 0]));
    /// Messages accepted per group, in order: { id, seq, caughtUp }.
    this.accepted = new Map(groups.map((g) => [g, []]));
    this.stats = {
      raw: 0, ignored: 0, resent: 0, gaps: 0, socketGaps: 0, syncs: 0, syncFailures: 0,
      connects: 0, connectErrors: 0, disconnects: 0, moves: 0,
    };
    this.violations = [];
    this.trail = []; // connection history, for failure messages
    /// One entry per socket: { n, gw, openedAt, connectedAt, disconnect: { reason, active, at } }.
    this.connections = [];
    this.sock = null;
    this.failures = 0;
    this.timer = null;
    this.closed = false;
    this.sockets = 0;
  }

  /// Opens a connection to gateway `gw` (0 or 1), with the handshake sync of every group.
  connect(gw) {
    if (this.closed) return;
    const st = {
      n: ++this.sockets, gw, socket: null, retired: false, handshake: true,
      syncing: new Map(), maxSeq: new Map(), seen: new Map(), gapDuringSync: new Set(),
    };
    this.sock = st;
    const conn = { n: st.n, gw, openedAt: Date.now(), connectedAt: null, disconnect: null };
    this.connections.push(conn);
    const socket = io(this.cluster.gatewayUrls[gw] + NS, {
      transports: ['websocket'],
      forceNew: true,
      reconnection: false, // this class picks the next gateway itself
      timeout: 5000,
      auth: (cb) => {
        const sync = this.groups.map((g) => ({ groupId: g, afterSeq: this.last.get(g) }));
        for (const { groupId, afterSeq } of sync) {
          st.syncing.set(groupId, 1);
          st.maxSeq.set(groupId, afterSeq);
          st.seen.set(groupId, new Set());
        }
        cb({ token: this.token, orgId: this.org, sync });
      },
    });
    st.socket = socket;
    socket.on('connect', () => {
      if (st !== this.sock) return;
      conn.connectedAt = Date.now();
      this.stats.connects += 1;
      this.failures = 0;
      this.trail.push(`#${st.n} gw${gw + 1} up`);
    });
    socket.on('connect_error', (err) => {
      this.stats.connectErrors += 1;
      this.retry(st, `#${st.n} gw${gw + 1} connect_error: ${err.message}`);
    });
    socket.on('disconnect', (reason) => {
      if (st.retired) return;
      // `socket.active`: whether socket.io-client itself would reconnect after this disconnect
      // (false after 'io server disconnect'); this class reconnects on its own either way.
      conn.disconnect = { reason, active: socket.active, at: Date.now() };
      this.stats.disconnects += 1;
      this.retry(st, `#${st.n} gw${gw + 1} disconnect: ${reason}`);
    });
    socket.on('newGroupMessage', (m) => this.onMessage(st, m));
    socket.on('groupsSynced', (p) => {
      if (st !== this.sock) return;
      st.handshake = false;
      for (const g of this.groups) st.syncing.set(g, (st.syncing.get(g) ?? 1) - 1);
      this.onSynced(st, p?.groups ?? []);
    });
  }

  retire(st) {
    st.retired = true;
    st.socket.removeAllListeners();
    st.socket.disconnect();
  }

  /// The connection broke or was refused: the other gateway, after a short backoff.
  retry(st, why) {
    if (st !== this.sock || st.retired || this.closed) return;
    this.retire(st);
    this.trail.push(why);
    this.failures += 1;
    const delay = Math.min(2000, 150 * this.failures) + Math.floor(this.rand() * 100);
    this.timer = setTimeout(() => {
      this.timer = null;
      this.connect(1 - st.gw);
    }, delay);
  }

  /// Moves to gateway `gw` on purpose (a load balancer rebalancing).
  moveTo(gw) {
    const st = this.sock;
    if (this.closed || this.timer || !st || st.gw === gw) return;
    this.retire(st);
    this.trail.push(`#${st.n} moved to gw${gw + 1}`);
    this.stats.moves += 1;
    this.connect(gw);
  }

  get connected() {
    return Boolean(this.sock && !this.sock.retired && this.sock.socket.connected);
  }

  get gateway() {
    return this.sock?.gw;
  }

  onMessage(st, m) {
    if (st !== this.sock || st.retired) return;
    this.stats.raw += 1;
    const g = m?.groupId;
    if (!this.last.has(g)) {
      this.violations.push(`${this.label} #${st.n}: a message of group ${g}, not one of its groups`);
      return;
    }
    // The socket's own stream.
    const syncing = (st.syncing.get(g) ?? 0) > 0;
    const max = st.maxSeq.get(g);
    const seen = st.seen.get(g);
    if (m.seq <= max) {
      if (syncing) {
        this.stats.resent += 1;
      } else {
        this.violations.push(
          `${this.label} socket #${st.n} on gateway ${st.gw + 1}, group ${short(g)}: seq ${m.seq} after ${max} with no sync outstanding (${seen.has(m.seq) ? 'the same seq twice' : 'out of order'})`,
        );
      }
    } else if (m.seq > max + 1) {
      this.stats.socketGaps += 1;
    }
    seen.add(m.seq);
    if (m.seq > max) st.maxSeq.set(g, m.seq);
    // The recipe.
    const last = this.last.get(g);
    if (m.seq <= last) {
      this.stats.ignored += 1;
      return;
    }
    if (m.seq > last + 1) {
      this.stats.gaps += 1;
      if (syncing) st.gapDuringSync.add(g);
      else this.sync(st, [g]);
      return;
    }
    this.last.set(g, m.seq);
    this.accepted.get(g).push({ id: m.id, seq: m.seq, caughtUp: syncing });
  }

  /// `syncGroups` for `groups` from their last seq; resolves with the ack (null if none).
  sync(st, groups) {
    if (st !== this.sock || st.retired || !st.socket.connected || groups.length === 0) return Promise.resolve(null);
    for (const g of groups) st.syncing.set(g, (st.syncing.get(g) ?? 0) + 1);
    this.stats.syncs += 1;
    const payload = { groups: groups.map((g) => ({ groupId: g, afterSeq: this.last.get(g) })) };
    return new Promise((resolve) => {
      st.socket.timeout(15_000).emit('syncGroups', payload, (err, ack) => {
        for (const g of groups) st.syncing.set(g, st.syncing.get(g) - 1);
        if (st !== this.sock || st.retired) return resolve(null);
        if (err || !ack?.ok) {
          this.stats.syncFailures += 1;
          this.trail.push(`#${st.n} sync failed: ${err ? err.message : JSON.stringify(ack?.error)}`);
          this.syncLater(st, groups);
          return resolve(null);
        }
        this.onSynced(st, ack.data?.groups ?? []);
        resolve(ack);
      });
    });
  }

  /// After a sync: groups whose catch-up failed or was cut short, or that showed a gap while
  /// it ran, are synced again.
  onSynced(st, summaries) {
    const again = new Set();
    for (const s of summaries) {
      if (s.error || s.hasMore) again.add(s.groupId);
      if (s.error) this.stats.syncFailures += 1;
    }
    for (const g of st.gapDuringSync) {
      if ((st.syncing.get(g) ?? 0) === 0) {
        st.gapDuringSync.delete(g);
        again.add(g);
      }
    }
    if (again.size) this.syncLater(st, [...again]);
  }

  syncLater(st, groups) {
    setTimeout(() => this.sync(st, groups.filter((g) => (st.syncing.get(g) ?? 0) === 0)), 300 + Math.floor(this.rand() * 200));
  }

  /// The last step of the recipe at the end: connected, handshake sync done, one syncGroups of
  /// every group.
  async finalSync() {
    await eventually(() => this.connected && !this.sock.handshake, { timeoutMs: 30_000, what: `${this.label} connected and synced (${this.trail.slice(-4).join('; ')})` });
    return this.sync(this.sock, this.groups);
  }

  /// sendGroupMessage with an ack, retried with the same clientMessageId until acknowledged.
  async sendSocket(rec, deadline) {
    while (Date.now() < deadline && rec.attempts < SEND_MAX_ATTEMPTS) {
      const st = this.sock;
      if (!st || st.retired || !st.socket.connected) {
        await sleep(100);
        continue;
      }
      rec.attempts += 1;
      try {
        const ack = await st.socket.timeout(ACK_TIMEOUT_MS).emitWithAck('sendGroupMessage', {
          groupId: rec.groupId, content: rec.content, clientMessageId: rec.cmid,
        });
        if (ack?.ok) return { data: ack.data, replayed: ack.replayed === true, via: `gateway${st.gw + 1}` };
        rec.errors.push(`socket:${ack?.error?.statusCode ?? JSON.stringify(ack)}`);
        if (ack?.error?.statusCode && ack.error.statusCode < 500 && ack.error.statusCode !== 429) {
          rec.fatal = `socket ack ${JSON.stringify(ack)}`;
          return null;
        }
      } catch {
        rec.errors.push('socket:timeout');
      }
      await sleep(backoff(rec.attempts));
    }
    return null;
  }

  close() {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    if (this.sock && !this.sock.retired) this.retire(this.sock);
  }
}

/// POST a message over REST, retried with the same clientMessageId (on the other API pod each
/// time, as a load balancer would) until acknowledged.
export async function restSend(cluster, token, org, rec, firstApi, deadline) {
  for (let k = 0; Date.now() < deadline && rec.attempts < SEND_MAX_ATTEMPTS; k++) {
    const api = (firstApi + k) % cluster.apiUrls.length;
    rec.attempts += 1;
    try {
      const res = await fetch(`${cluster.apiUrls[api]}/client/community/groups/${rec.groupId}/messages`, {
        method: 'POST',
        headers: { orgid: org, authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        body: JSON.stringify({ content: rec.content, clientMessageId: rec.cmid }),
        signal: AbortSignal.timeout(ACK_TIMEOUT_MS),
      });
      const text = await res.text();
      if (res.status === 201 || res.status === 200) {
        return { data: JSON.parse(text), replayed: res.status === 200, via: `api${api + 1}` };
      }
      rec.errors.push(`rest:${res.status}`);
      if (res.status < 500 && res.status !== 429) {
        rec.fatal = `REST ${res.status} ${text}`;
        return null;
      }
    } catch (e) {
      rec.errors.push(`rest:${e.name === 'TimeoutError' ? 'timeout' : (e.cause?.code ?? e.name)}`);
    }
    await sleep(backoff(k + 1));
  }
  return null;
}

/// A group's whole history over REST, oldest first (`afterSeq=0`, then `after` paging, `limit`
/// messages a page).
export async function fullHistory(rest, groupId, { limit = 200 } = {}) {
  const all = [];
  let query = `?afterSeq=0&limit=${limit}`;
  for (let page = 0; page < 100; page++) {
    const { data, hasMore } = await rest.history(groupId, query);
    all.push(...data);
    if (!hasMore || data.length === 0) return all;
    query = `?after=${data[data.length - 1].id}&limit=${limit}`;
  }
  throw new Error(`history of ${groupId}: more than 100 pages`);
}

export const countBy = (items) => {
  const out = new Map();
  for (const it of items) out.set(it, (out.get(it) ?? 0) + 1);
  return out;
};
export const fmtCounts = (m) => [...m].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k}:${v}`).join(',') || 'none';

/// The members catch up at the end: a final syncGroups of all their groups (the recipe's last
/// step), until each has the last stored seq of each of its groups. Resolves with null, or the
/// reason it gave up after `timeoutMs`.
export async function catchUp(members, truth, { timeoutMs = 45_000 } = {}) {
  let everyone = true;
  try {
    await eventually(async () => {
      const who = everyone ? members : members.filter((m) => lagging(m, truth));
      everyone = false;
      await Promise.all(who.map((m) => m.finalSync()));
      return !members.some((m) => lagging(m, truth));
    }, { timeoutMs, intervalMs: 500, what: 'every member at the last seq of each of its groups' });
    return null;
  } catch (e) {
    return e.message;
  }
}

/// Whether a member is behind the stored history of one of its groups.
export const lagging = (m, truth) => m.groups.some((g) => m.last.get(g) < truth.get(g).length);

/// Every member got every message of its groups exactly once, in seq order, and each socket's
/// own stream was in order without repeats. `truth`: groupId -> stored history (fullHistory).
/// Returns { live, caughtUp, lost, duplicates, violations, problems }.
export function checkDelivery(members, truth) {
  const problems = [];
  let live = 0;
  let caughtUp = 0;
  let lost = 0;
  let duplicates = 0;
  for (const m of members) {
    for (const g of m.groups) {
      const want = truth.get(g);
      const got = m.accepted.get(g);
      live += got.filter((x) => !x.caughtUp).length;
      caughtUp += got.filter((x) => x.caughtUp).length;
      const gotIds = countBy(got.map((x) => x.id));
      const wantIds = new Set(want.map((x) => x.id));
      const missing = want.filter((x) => !gotIds.has(x.id));
      const twice = [...gotIds].filter(([, n]) => n > 1);
      const foreign = got.filter((x) => !wantIds.has(x.id));
      lost += missing.length;
      duplicates += twice.reduce((a, [, n]) => a + n - 1, 0);
      if (missing.length) problems.push(`${m.label}, group ${short(g)}: ${missing.length} of ${want.length} messages never delivered (seqs ${missing.map((x) => x.seq).slice(0, 20).join(',')}); last seq ${m.last.get(g)}; connections: ${m.trail.slice(-8).join('; ')}`);
      if (twice.length) problems.push(`${m.label}, group ${short(g)}: delivered twice: ${twice.slice(0, 10).map(([id, n]) => `${id} x${n}`).join(', ')}`);
      if (foreign.length) problems.push(`${m.label}, group ${short(g)}: ${foreign.length} delivered messages are not in the stored history`);
      const order = got.map((x) => x.seq);
      if (order.some((s, i) => i > 0 && s <= order[i - 1])) problems.push(`${m.label}, group ${short(g)}: not in seq order: ${order.join(',')}`);
      const byIdOk = got.every((x) => want[x.seq - 1]?.id === x.id);
      if (!byIdOk) problems.push(`${m.label}, group ${short(g)}: a delivered message's seq does not match the stored one`);
    }
  }
  const violations = members.flatMap((m) => m.violations);
  duplicates += violations.filter((v) => v.includes('twice')).length;
  for (const v of violations.slice(0, 20)) problems.push(v);
  if (violations.length > 20) problems.push(`... and ${violations.length - 20} more socket stream violations`);
  return { live, caughtUp, lost, duplicates, violations, problems };
}
