// Fault tests of the scaled topology (2 API + 2 gateway processes) on a private Postgres and a
// private Redis (services.mjs), which this file kills and restarts; the machine's shared ones
// are never touched.
//
// 1. Randomized delivery under faults: users in groups, each with one socket.io client that
//    follows the README's catch-up recipe and moves to the other gateway when its connection
//    breaks; messages sent at a steady pace over REST (both API pods) and sockets, each retried
//    with its clientMessageId until acknowledged; meanwhile: kill -9 of gateway 1 (restarted),
//    kill -9 of API 2 (restarted), a Redis restart, Postgres stopped for a few seconds. Then
//    every acknowledged message is stored exactly once, and every member got every message of
//    its groups exactly once, in seq order.
// 2. A client that reconnects to the other gateway with its last seq gets exactly what it
//    missed, then the live messages, with no duplicate at the seam.
// 3. The same clientMessageId sent at once from two sockets (one per gateway) and over REST:
//    one message, one non-replayed answer, delivered once.
//
// Knobs (environment): FAULT_SEED (random seed, printed), FAULT_USERS (24), FAULT_GROUPS (6),
// FAULT_RATE (messages per second, 10), FAULT_PHASE_MS (traffic before, between and after the
// faults, 8000), FAULT_PG_DOWN_MS (3000). E2E_KEEP_LOGS=1 keeps the server, Postgres and Redis
// logs. The faults make the servers log many WARN/ERROR lines on purpose, so they are not
// echoed here unless E2E_ECHO_LOGS says so (=problems or =all); panics are checked in the logs.
//
//   cd tests/e2e && COMMUNITY_CHAT_BIN=/path/to/community-chat node --test fault.test.mjs

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { after, afterEach, before, describe, test } from 'node:test';
import { io } from 'socket.io-client';

import { externalTopology, startCluster } from './cluster.mjs';
import { Clients, NS, Rest, SETTLE_MS, eventually, sleep, uid } from './helpers.mjs';
import { privatePostgres, privateRedis } from './services.mjs';

process.env.E2E_ECHO_LOGS ??= 'none';

const modes = (process.env.E2E_MODES || 'scaled,standalone').split(',').map((m) => m.trim());
const skip = externalTopology()
  ? 'external topology: no access to its processes, Postgres or Redis'
  : !modes.includes('scaled')
    ? 'E2E_MODES does not include scaled'
    : false;

const num = (name, dflt) => {
  const v = Number(process.env[name]);
  return Number.isFinite(v) && v > 0 ? v : dflt;
};
const SEED = num('FAULT_SEED', crypto.randomInt(1, 2 ** 31));
const USERS = num('FAULT_USERS', 24);
const GROUPS = num('FAULT_GROUPS', 6);
const RATE = num('FAULT_RATE', 10);
const PHASE_MS = num('FAULT_PHASE_MS', 8000);
const PG_DOWN_MS = num('FAULT_PG_DOWN_MS', 3000);
/// Hard cap on messages sent by test 1.
const MAX_MESSAGES = 600;
/// A send is retried (same clientMessageId) until acknowledged, at most this long / this often.
const SEND_DEADLINE_MS = 60_000;
const SEND_MAX_ATTEMPTS = 80;
/// Socket ack wait per attempt.
const ACK_TIMEOUT_MS = 5000;
/// Processes run with the server defaults, except a per-socket send rate that the socket
/// senders (a few per second per user) cannot reach.
const FAULT_ENV = { SOCKET_SENDS_PER_SECOND: '50' };

/// mulberry32: a small seeded PRNG, so a failing run can be replayed with FAULT_SEED.
function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const short = (id) => String(id).slice(-6);
const backoff = (attempt) => Math.min(1000, 100 * attempt);

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
class Member {
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
async function restSend(cluster, token, org, rec, firstApi, deadline) {
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

/// A group's whole history over REST, oldest first (`afterSeq=0`, then `after` paging).
async function fullHistory(rest, groupId) {
  const all = [];
  let query = '?afterSeq=0&limit=200';
  for (let page = 0; page < 100; page++) {
    const { data, hasMore } = await rest.history(groupId, query);
    all.push(...data);
    if (!hasMore || data.length === 0) return all;
    query = `?after=${data[data.length - 1].id}&limit=200`;
  }
  throw new Error(`history of ${groupId}: more than 100 pages`);
}

const countBy = (items) => {
  const out = new Map();
  for (const it of items) out.set(it, (out.get(it) ?? 0) + 1);
  return out;
};
const fmtCounts = (m) => [...m].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k}:${v}`).join(',') || 'none';

describe('faults in the scaled topology (private Postgres and Redis)', { skip, timeout: 300_000 }, () => {
  let pg;
  let redis;
  let cluster;
  let clients;
  /// Test 1's members, closed after each test whatever happened (they reconnect by themselves).
  const openMembers = [];
  const run = uid();
  const org = `orgF-${run}`;
  const rest = (api, email) => new Rest(cluster, api, org, email);

  before(async () => {
    pg = await privatePostgres();
    redis = await privateRedis();
    cluster = await startCluster({ mode: 'scaled', env: FAULT_ENV, postgresUrl: pg.url, redisUrl: redis.url });
  });

  after(async () => {
    clients?.closeAll();
    try {
      await cluster?.stop();
    } finally {
      try {
        await redis?.destroy();
      } finally {
        await pg?.destroy();
      }
    }
  });

  afterEach(() => {
    for (const m of openMembers.splice(0)) m.close();
    clients?.closeAll();
    clients = null;
  });

  test('randomized delivery under faults: every acknowledged message stored once and delivered once, in order', { timeout: 200_000 }, async () => {
    const rand = prng(SEED);
    const pick = (arr) => arr[Math.floor(rand() * arr.length)];
    const started = Date.now();
    const elapsed = () => `${((Date.now() - started) / 1000).toFixed(1)}s`;
    const log = (s) => process.stderr.write(`fault test [${elapsed()}] ${s}\n`);
    log(`seed ${SEED} (FAULT_SEED=${SEED} replays the same groups and senders)`);

    // Users in groups of mixed sizes: each user in 1-3 groups, picked with uneven weights.
    const emails = Array.from({ length: USERS }, (_, i) => `u${i}-${run}@example.com`);
    const weights = Array.from({ length: GROUPS }, (_, i) => i + 1);
    const total = weights.reduce((a, b) => a + b, 0);
    const weighted = () => {
      let r = rand() * total;
      for (let i = 0; i < GROUPS; i++) if ((r -= weights[i]) < 0) return i;
      return GROUPS - 1;
    };
    const membersOf = Array.from({ length: GROUPS }, () => new Set());
    emails.forEach((email) => {
      const k = 1 + Math.floor(rand() * 3);
      for (let tries = 0; tries < 20 && [...membersOf].filter((s) => s.has(email)).length < k; tries++) membersOf[weighted()].add(email);
    });
    for (let i = 0; i < GROUPS; i++) {
      while (membersOf[i].size < 2) membersOf[i].add(pick(emails));
    }
    const groups = [];
    for (let i = 0; i < GROUPS; i++) {
      const [admin, ...others] = [...membersOf[i]];
      const group = await rest(i % 2, admin).createGroup({ name: `fault ${i}`, members: others });
      assert.equal(group.memberCount, membersOf[i].size);
      groups.push({ id: group.id, admin, members: [...membersOf[i]] });
    }
    // A group for the outage probes, with nobody connected.
    const prober = `prober-${run}@example.com`;
    const probeGroup = await rest(0, prober).createGroup({ name: 'probes' });
    const groupsOf = new Map(emails.map((e) => [e, groups.filter((g) => g.members.includes(e)).map((g) => g.id)]));
    const members = emails.filter((e) => groupsOf.get(e).length > 0).map((email) => new Member({
      cluster, org, email, groups: groupsOf.get(email), rand,
    }));
    openMembers.push(...members);
    const memberOf = new Map(members.map((m) => [m.email, m]));
    log(`${members.length} users in ${GROUPS} groups of ${groups.map((g) => g.members.length).join(', ')} members`);

    const problems = [];
    const faults = [];
    let traffic = true;
    const records = [];
    const sends = [];
    let sender = Promise.resolve();
    try {
      for (const m of members) m.connect(Math.floor(rand() * 2));
      await eventually(() => members.every((m) => m.connected && !m.sock.handshake), { timeoutMs: 30_000, what: 'every member connected' });
      log(`${members.length} members connected: ${members.filter((m) => m.gateway === 0).length} on gateway 1, ${members.filter((m) => m.gateway === 1).length} on gateway 2`);

      // Senders: a steady pace, REST on API 1, REST on API 2 and sockets in turn; each send
      // runs on its own and retries until acknowledged.
      const trafficStart = Date.now();
      sender = (async () => {
        const interval = 1000 / RATE;
        for (let i = 0; traffic && i < MAX_MESSAGES; i++) {
          const due = trafficStart + i * interval;
          const wait = due - Date.now();
          if (wait > 0) await sleep(wait);
          const group = pick(groups);
          const from = pick(group.members);
          const channel = ['rest1', 'rest2', 'socket'][i % 3];
          const rec = {
            i, cmid: `fault-${run}-${i}-${crypto.randomUUID()}`, groupId: group.id, from, channel,
            content: `message ${i} from ${from.split('@')[0]} via ${channel}`,
            attempts: 0, errors: [], ack: null, fatal: null, sentAt: Date.now(), ackedAt: null,
          };
          records.push(rec);
          const deadline = Date.now() + SEND_DEADLINE_MS;
          const member = memberOf.get(from);
          const p = (channel === 'socket'
            ? member.sendSocket(rec, deadline)
            : restSend(cluster, member.token, org, rec, channel === 'rest1' ? 0 : 1, deadline)
          ).then((ack) => {
            rec.ack = ack;
            rec.ackedAt = Date.now();
          }, (e) => {
            rec.fatal = `threw: ${e.stack}`;
          });
          sends.push(p);
        }
      })();

      const acked = () => records.filter((r) => r.ack).length;
      const phase = async (what) => {
        const before = records.length;
        await sleep(PHASE_MS);
        log(`${what}: ${records.length - before} messages sent meanwhile (${acked()}/${records.length} acknowledged so far)`);
      };
      const fault = async (name, fn) => {
        const t0 = Date.now();
        const sentBefore = records.length;
        log(`fault ${name}: start`);
        try {
          await fn();
        } catch (e) {
          problems.push(`fault ${name}: ${e.message}`);
          log(`fault ${name} FAILED: ${e.message}`);
        }
        faults.push(name);
        log(`fault ${name}: done in ${Date.now() - t0} ms, ${records.length - sentBefore} messages sent during it`);
      };
      const readyAll = async (timeoutMs) => {
        for (const url of [...cluster.apiUrls, ...cluster.gatewayUrls]) {
          await eventually(async () => (await fetch(`${url}/readyz`, { signal: AbortSignal.timeout(2000) })).status === 200, { timeoutMs, what: `${url}/readyz 200` });
        }
      };

      await phase('traffic before the faults');

      await fault('gateway-kill', async () => {
        const on1 = members.filter((m) => m.gateway === 0).length;
        await cluster.kill('gateway1');
        log(`gateway 1 killed (-9) with ${on1} members on it`);
        await sleep(1500);
        await cluster.restart('gateway1');
        log(`gateway 1 restarted on ${cluster.gatewayUrls[0]}`);
        await eventually(() => members.every((m) => m.connected), { timeoutMs: 20_000, what: 'every member connected again after the gateway kill' });
        // A load balancer spreads new connections again: half of the members move back.
        const movers = members.filter((m, i) => i % 2 === 0 && m.gateway === 1);
        for (const m of movers) {
          m.moveTo(0);
          await sleep(40);
        }
        log(`${movers.length} members moved back to gateway 1`);
      });
      await phase('traffic after the gateway kill');

      await fault('api-kill', async () => {
        await cluster.kill('api2');
        log('API 2 killed (-9)');
        await sleep(1500);
        await cluster.restart('api2');
        log(`API 2 restarted on ${cluster.apiUrls[1]}`);
      });
      await phase('traffic after the API kill');

      await fault('redis-restart', async () => {
        await redis.stop(); // SIGKILL
        log('Redis killed (-9)');
        await sleep(1000);
        await redis.start();
        log('Redis started again');
        await readyAll(20_000);
      });
      await phase('traffic after the Redis restart');

      await fault('postgres-stop', async () => {
        await pg.stop(); // immediate shutdown
        const downAt = Date.now();
        log('Postgres stopped (immediate)');
        // While it is down: a REST post answers 503 quickly, in the error shape.
        const probes = await Promise.all([0, 1].map(async (api) => {
          const t0 = Date.now();
          try {
            const res = await fetch(`${cluster.apiUrls[api]}/client/community/groups/${probeGroup.id}/messages`, {
              method: 'POST',
              headers: { orgid: org, authorization: `Bearer ${cluster.token(org, prober)}`, 'content-type': 'application/json' },
              body: JSON.stringify({ content: 'probe while Postgres is down', clientMessageId: `probe-down-${api}-${uid()}` }),
              signal: AbortSignal.timeout(5000),
            });
            const text = await res.text();
            let body = null;
            try {
              body = JSON.parse(text);
            } catch {
              body = text;
            }
            return { api: api + 1, status: res.status, body, ms: Date.now() - t0 };
          } catch (e) {
            return { api: api + 1, status: null, error: e.name === 'TimeoutError' ? 'no answer within 5 s' : String(e), ms: Date.now() - t0 };
          }
        }));
        for (const p of probes) {
          log(`probe on API ${p.api} while Postgres is down: ${p.status ?? p.error} in ${p.ms} ms ${JSON.stringify(p.body ?? null)}`);
          const shapeOk = p.body && typeof p.body === 'object' && p.body.statusCode === 503
            && typeof p.body.message === 'string' && p.body.message.length > 0 && typeof p.body.error === 'string';
          if (p.status !== 503 || !shapeOk || p.ms > 5000) {
            problems.push(`POST on API ${p.api} while Postgres was down: expected 503 { statusCode, message, error } within 5 s, got ${p.status ?? p.error} after ${p.ms} ms: ${JSON.stringify(p.body ?? null)}`);
          }
        }
        const rest0 = PG_DOWN_MS - (Date.now() - downAt);
        if (rest0 > 0) await sleep(rest0);
        await pg.start();
        const upAt = Date.now();
        log(`Postgres started again after ${upAt - downAt} ms down`);
        // The service recovers by itself: posts succeed on both API pods, every process is ready.
        for (const api of [0, 1]) {
          await eventually(async () => {
            const { status } = await rest(api, prober).call('POST', `/${probeGroup.id}/messages`, { content: 'probe after Postgres came back' });
            return status === 201;
          }, { timeoutMs: 20_000, intervalMs: 250, what: `a POST on API ${api + 1} answering 201 after Postgres came back` });
        }
        await readyAll(20_000);
        log(`service recovered ${Date.now() - upAt} ms after Postgres came back`);
      });
      await phase('traffic after the Postgres stop');
    } finally {
      traffic = false;
    }

    // Every send ends (acknowledged, or given up after its deadline).
    await sender;
    await Promise.all(sends);
    const trafficEnd = Date.now();
    log(`${records.length} messages sent; waiting for the members to settle`);

    // The stored truth, over REST (with `after` paging) and straight from Postgres.
    const truth = new Map();
    for (const g of groups) truth.set(g.id, await fullHistory(rest(0, g.admin), g.id));

    // The members catch up: a final syncGroups of all their groups, until each has the last
    // seq of each group (bounded).
    const lagging = (m) => m.groups.some((g) => m.last.get(g) < truth.get(g).length);
    let everyone = true;
    await eventually(async () => {
      const who = everyone ? members : members.filter(lagging);
      everyone = false;
      await Promise.all(who.map((m) => m.finalSync()));
      return !members.some(lagging);
    }, { timeoutMs: 45_000, intervalMs: 500, what: 'every member at the last seq of each of its groups' }).catch((e) => problems.push(e.message));
    await sleep(SETTLE_MS); // anything late (a duplicate) arrives now

    const rows = await pg.psql(
      `select client_message_id, count(*) from messages where org_id = '${org}' and client_message_id is not null group by client_message_id having count(*) > 1`,
      cluster.database,
    );
    const dbCount = Number((await pg.psql(`select count(*) from messages where org_id = '${org}' and client_message_id like 'fault-${run}-%'`, cluster.database)).trim());

    // Stored exactly once.
    const stored = new Map(); // cmid -> rows
    for (const [g, list] of truth) {
      const seqs = list.map((m) => m.seq);
      assert.deepEqual(seqs, Array.from({ length: list.length }, (_, i) => i + 1), `group ${short(g)}: stored seqs have a gap or a repeat`);
      for (const m of list) {
        if (!m.clientMessageId?.startsWith(`fault-${run}-`)) {
          problems.push(`group ${short(g)}: a stored message without one of our clientMessageIds: ${JSON.stringify(m)}`);
          continue;
        }
        stored.set(m.clientMessageId, [...(stored.get(m.clientMessageId) ?? []), m]);
      }
    }
    const ackedRecs = records.filter((r) => r.ack);
    const unacked = records.filter((r) => !r.ack);
    let lostStored = 0;
    let dupStored = 0;
    for (const r of records) {
      const s = stored.get(r.cmid) ?? [];
      if (s.length > 1) {
        dupStored += s.length - 1;
        problems.push(`clientMessageId ${r.cmid} stored ${s.length} times: seqs ${s.map((m) => m.seq).join(',')}`);
      }
      if (r.ack && s.length === 0) {
        lostStored += 1;
        problems.push(`message ${r.i} (${r.channel}) acknowledged as ${r.ack.data.id} seq ${r.ack.data.seq} via ${r.ack.via}, but not stored`);
      }
      if (r.ack && s.length === 1 && (s[0].id !== r.ack.data.id || s[0].groupId !== r.groupId || s[0].content !== r.content || s[0].from !== r.from)) {
        problems.push(`message ${r.i}: acknowledged ${JSON.stringify(r.ack.data)}, stored ${JSON.stringify(s[0])}`);
      }
    }
    if (rows.trim()) problems.push(`Postgres: clientMessageIds with more than one row: ${rows.trim()}`);
    if (dbCount !== stored.size) problems.push(`Postgres has ${dbCount} rows of this run, REST history ${stored.size}`);
    for (const r of unacked) {
      problems.push(`message ${r.i} (${r.channel}, group ${short(r.groupId)}) never acknowledged after ${r.attempts} attempts: ${r.fatal ?? ''} errors ${fmtCounts(countBy(r.errors))}`);
    }
    // Each ack of a message is "stored" once and "replayed" for the retries that reached the
    // store after it; a first attempt is never a replay.
    const replayedAcks = ackedRecs.filter((r) => r.ack.replayed);

    // Delivered exactly once, in seq order, to every member of the group.
    let live = 0;
    let caughtUp = 0;
    let lostDelivery = 0;
    let dupDelivery = 0;
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
        lostDelivery += missing.length;
        dupDelivery += twice.reduce((a, [, n]) => a + n - 1, 0);
        if (missing.length) problems.push(`${m.label}, group ${short(g)}: ${missing.length} of ${want.length} messages never delivered (seqs ${missing.map((x) => x.seq).slice(0, 20).join(',')}); last seq ${m.last.get(g)}; connections: ${m.trail.slice(-8).join('; ')}`);
        if (twice.length) problems.push(`${m.label}, group ${short(g)}: delivered twice: ${twice.slice(0, 10).map(([id, n]) => `${id} x${n}`).join(', ')}`);
        if (foreign.length) problems.push(`${m.label}, group ${short(g)}: ${foreign.length} delivered messages are not in the stored history`);
        const order = got.map((x) => x.seq);
        if (order.some((s, i) => i > 0 && s <= order[i - 1])) problems.push(`${m.label}, group ${short(g)}: not in seq order: ${order.join(',')}`);
        const byIdOk = got.every((x) => want[x.seq - 1]?.id === x.id);
        if (!byIdOk) problems.push(`${m.label}, group ${short(g)}: a delivered message's seq does not match the stored one`);
      }
    }
    const socketViolations = members.flatMap((m) => m.violations);
    dupDelivery += socketViolations.filter((v) => v.includes('twice')).length;
    for (const v of socketViolations.slice(0, 20)) problems.push(v);
    if (socketViolations.length > 20) problems.push(`... and ${socketViolations.length - 20} more socket stream violations`);

    const sum = (k) => members.reduce((a, m) => a + m.stats[k], 0);
    const errors = countBy(records.flatMap((r) => r.errors));
    const lost = lostStored + lostDelivery;
    const duplicates = dupStored + dupDelivery;
    const line = `fault test: acked=${ackedRecs.length} stored=${stored.size} delivered_live=${live} caught_up=${caughtUp} lost=${lost} duplicates=${duplicates} faults=${faults.join(',')}`;
    const detail = `fault test details: seed=${SEED} sent=${records.length} unacked=${unacked.length} replayed_acks=${replayedAcks.length} `
      + `retried_sends=${records.filter((r) => r.attempts > 1).length} send_errors=${fmtCounts(errors)} `
      + `raw_received=${sum('raw')} resent_during_sync=${sum('resent')} ignored=${sum('ignored')} gaps_seen=${sum('gaps')} socket_gaps=${sum('socketGaps')} `
      + `syncs=${sum('syncs')} sync_failures=${sum('syncFailures')} connects=${sum('connects')} connect_errors=${sum('connectErrors')} disconnects=${sum('disconnects')} moves=${sum('moves')} `
      + `socket_violations=${socketViolations.length} traffic_s=${((trafficEnd - started) / 1000).toFixed(1)} total_s=${((Date.now() - started) / 1000).toFixed(1)}`;
    console.log(line);
    console.log(detail);

    for (const m of members) m.close();
    assert.deepEqual(faults, ['gateway-kill', 'api-kill', 'redis-restart', 'postgres-stop']);
    assert.ok(records.length >= 200, `only ${records.length} messages were sent`);
    assert.equal(lost, 0, `lost=${lost}\n${problems.join('\n')}`);
    assert.equal(duplicates, 0, `duplicates=${duplicates}\n${problems.join('\n')}`);
    assert.deepEqual(problems, [], problems.join('\n'));
  });

  test('a client that reconnects to the other gateway gets exactly what it missed, then live messages, no duplicate at the seam', async () => {
    clients = new Clients(cluster);
    const alice = `alice2-${run}@example.com`;
    const bob = `bob2-${run}@example.com`;
    const group = await rest(0, alice).createGroup({ members: [bob] });
    const quiet = await rest(1, alice).createGroup({ members: [bob] }); // nothing missed here
    const post = (api, g, content) => rest(api, bob).post(g.id, content);

    const a1 = await clients.connect(0, org, alice);
    const early = [];
    for (let i = 0; i < 3; i++) early.push(await post(i % 2, group, `before ${i}`));
    const q1 = await post(0, quiet, 'quiet before');
    await Promise.all([...early, q1].map((m) => a1.waitMessage(m.id)));
    const last = Math.max(...a1.received('newGroupMessage', (m) => m.groupId === group.id).map((m) => m.seq));
    const lastQuiet = Math.max(...a1.received('newGroupMessage', (m) => m.groupId === quiet.id).map((m) => m.seq));
    assert.equal(last, 3);
    a1.close();
    await sleep(200);

    // Missed while away, over both API pods.
    const missed = [];
    for (let i = 0; i < 5; i++) missed.push(await post(i % 2, group, `missed ${i}`));
    // More arrive while the new connection is catching up (the seam).
    const seam = [];
    const poster = (async () => {
      for (let i = 0; i < 6; i++) {
        seam.push(await post(i % 2, group, `during the catch-up ${i}`));
        await sleep(30);
      }
    })();
    const a2 = clients.open(1, {
      token: cluster.token(org, alice), orgId: org,
      sync: [{ groupId: group.id, afterSeq: last }, { groupId: quiet.id, afterSeq: lastQuiet }],
    }, { label: `${alice}/gateway2` });
    await a2.connected();
    const synced = await a2.waitFor('groupsSynced');
    await poster;
    const liveAfter = [await post(0, group, 'live 0'), await post(1, group, 'live 1')];
    const q2 = await post(1, quiet, 'quiet live');
    await a2.waitMessage(liveAfter[1].id);
    await a2.waitMessage(q2.id);
    await sleep(SETTLE_MS);

    const got = a2.received('newGroupMessage', (m) => m.groupId === group.id);
    const expected = [...missed, ...seam, ...liveAfter];
    assert.deepEqual(got.map((m) => m.seq), expected.map((m) => m.seq), `seqs on the new connection: ${got.map((m) => m.seq).join(',')}`);
    assert.deepEqual(got.map((m) => m.id), expected.map((m) => m.id));
    assert.deepEqual(got.slice(0, missed.length).map((m) => m.content), missed.map((m) => m.content), 'the missed messages first, in order');
    const summary = synced.groups.find((s) => s.groupId === group.id);
    assert.ok(summary && !summary.error && summary.delivered >= missed.length, `groupsSynced: ${JSON.stringify(synced)}`);
    const quietSummary = synced.groups.find((s) => s.groupId === quiet.id);
    assert.equal(quietSummary?.delivered, 0, `nothing missed in the quiet group: ${JSON.stringify(synced)}`);
    assert.deepEqual(a2.received('newGroupMessage', (m) => m.groupId === quiet.id).map((m) => m.seq), [lastQuiet + 1]);
    // The old connection saw nothing of what was posted after it closed.
    assert.equal(a1.received('newGroupMessage').filter((m) => m.seq > last && m.groupId === group.id).length, 0);
  });

  test('the same clientMessageId from two sockets on two gateways and REST at once: stored once, one non-replay, delivered once', async () => {
    clients = new Clients(cluster);
    const alice = `alice3-${run}@example.com`;
    const bob = `bob3-${run}@example.com`;
    const carol = `carol3-${run}@example.com`;
    const group = await rest(0, alice).createGroup({ members: [bob, carol] });
    const s1 = await clients.connect(0, org, alice);
    const s2 = await clients.connect(1, org, alice);
    const b = await clients.connect(0, org, bob);
    const c = await clients.connect(1, org, carol);
    const rounds = 10;
    const ids = [];
    for (let round = 0; round < rounds; round++) {
      const clientMessageId = `race-${run}-${round}-${crypto.randomUUID()}`;
      const body = { groupId: group.id, content: `race ${round}`, clientMessageId };
      const [k1, k2, r] = await Promise.all([
        s1.ack('sendGroupMessage', body),
        s2.ack('sendGroupMessage', body),
        rest(round % 2, alice).call('POST', `/${group.id}/messages`, { content: body.content, clientMessageId }),
      ]);
      const what = `round ${round}: gateway 1 ack ${JSON.stringify(k1)}, gateway 2 ack ${JSON.stringify(k2)}, REST ${r.status} ${JSON.stringify(r.body)}`;
      assert.equal(k1?.ok, true, what);
      assert.equal(k2?.ok, true, what);
      assert.ok(r.status === 201 || r.status === 200, what);
      assert.equal(k1.data.id, r.body.id, what);
      assert.equal(k2.data.id, r.body.id, what);
      assert.equal(k1.data.seq, r.body.seq, what);
      assert.equal(typeof k1.replayed, 'boolean', what);
      assert.equal(typeof k2.replayed, 'boolean', what);
      const firsts = [k1.replayed === false, k2.replayed === false, r.status === 201].filter(Boolean).length;
      assert.equal(firsts, 1, `exactly one answer is not a replay: ${what}`);
      ids.push(r.body.id);
    }
    const history = await fullHistory(rest(1, bob), group.id);
    assert.deepEqual(history.map((m) => m.id), ids, 'one stored message per clientMessageId, in order');
    assert.deepEqual(history.map((m) => m.seq), ids.map((_, i) => i + 1));
    await Promise.all([s1, s2, b, c].map((s) => s.waitMessage(ids[ids.length - 1])));
    await sleep(SETTLE_MS);
    for (const s of [s1, s2, b, c]) {
      for (const id of ids) assert.equal(s.countMessage(id), 1, `${s.label} received ${id} ${s.countMessage(id)} times`);
      assert.deepEqual(s.received('newGroupMessage').map((m) => m.seq), ids.map((_, i) => i + 1), `${s.label}: seqs`);
    }
  });

  test('no server process crashed or panicked', () => {
    assert.deepEqual(cluster.crashed(), []);
    for (const p of [...cluster.procs, ...cluster.killed]) assert.deepEqual(p.grep(/panicked/), [], `${p.name} panicked`);
  });
});
