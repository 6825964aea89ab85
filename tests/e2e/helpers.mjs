// Helpers for the end-to-end tests: a REST client acting as one user, socket.io clients that
// record every event, and waits that always time out instead of hanging.

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { io } from 'socket.io-client';

export const NS = '/community-chat';
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
/// How long "exactly once" collects after the last expected event.
export const SETTLE_MS = 500;
/// Longest wait for one expected event.
export const EVENT_TIMEOUT_MS = 5000;

/// A positive number from the environment, else `dflt`.
export function envNumber(name, dflt) {
  const v = Number(process.env[name]);
  return Number.isFinite(v) && v > 0 ? v : dflt;
}

export const uid = () => crypto.randomBytes(4).toString('hex');

/// Which org each group belongs to, for the cross-org invariant.
const GROUP_ORG = new Map();

/// A REST client of one API process acting as (org, email).
export class Rest {
  constructor(cluster, apiIndex, org, email) {
    this.base = cluster.apiUrls[apiIndex % cluster.apiUrls.length];
    this.org = org;
    this.email = email;
    this.token = cluster.token(org, email);
  }

  async call(method, path, body, { expect } = {}) {
    const headers = { orgid: this.org, authorization: `Bearer ${this.token}` };
    if (body !== undefined) headers['content-type'] = 'application/json';
    const res = await fetch(`${this.base}/client/community/groups${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(10_000),
    });
    const text = await res.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      json = text;
    }
    if (expect !== undefined) {
      const ok = Array.isArray(expect) ? expect.includes(res.status) : res.status === expect;
      assert.ok(ok, `${method} ${path} as ${this.email}@${this.org}: expected ${expect}, got ${res.status} ${text}`);
    }
    return { status: res.status, body: json };
  }

  async createGroup({ name = `g-${uid()}`, type = 'private', members = [], description } = {}) {
    const body = { name, type, members: members.map((m) => (typeof m === 'string' ? { email: m, role: 'member' } : m)) };
    if (description !== undefined) body.description = description;
    const { body: group } = await this.call('POST', '', body, { expect: 201 });
    GROUP_ORG.set(group.id, this.org);
    return group;
  }

  async post(groupId, content, extra = {}) {
    const { body } = await this.call('POST', `/${groupId}/messages`, { content, ...extra }, { expect: 201 });
    return body;
  }

  async history(groupId, query = '') {
    const { body } = await this.call('GET', `/${groupId}/messages${query}`, undefined, { expect: 200 });
    return body;
  }

  async addMember(groupId, email, role = 'member') {
    const { body } = await this.call('POST', `/${groupId}/members`, { email, role }, { expect: [200, 201] });
    return body;
  }

  async removeMember(groupId, email) {
    await this.call('DELETE', `/${groupId}/members/${encodeURIComponent(email)}`, undefined, { expect: 204 });
  }

  async deleteGroup(groupId) {
    await this.call('DELETE', `/${groupId}`, undefined, { expect: 204 });
  }
}

/// The group id an event is about, if any.
export function groupOf(event, payload) {
  if (!payload || typeof payload !== 'object') return undefined;
  if (event === 'addedToGroup' || event === 'groupUpdated') return payload.group?.id;
  return payload.groupId;
}

/// A socket.io client that records every event it receives.
export class Client {
  constructor(url, auth, { transports = ['websocket'], label, reconnection = false, autoConnect = true, extra = {} } = {}) {
    this.label = label ?? auth?.orgId ?? 'client';
    this.org = auth?.orgId;
    this.events = [];
    this.waiters = new Set();
    this.disconnects = [];
    this.reconnects = 0;
    this.connectErrors = [];
    const options = { transports, forceNew: true, reconnection, timeout: 5000, ...extra };
    if (auth !== undefined) options.auth = auth;
    this.socket = io(url + NS, { ...options, autoConnect: false });
    this.socket.onAny((event, ...args) => this.record(event, args[0]));
    this.socket.on('disconnect', (reason) => this.disconnects.push(reason));
    this.socket.on('connect_error', (err) => this.connectErrors.push(err));
    this.socket.io.on('reconnect', () => {
      this.reconnects += 1;
    });
    if (autoConnect) this.socket.connect();
  }

  record(event, payload) {
    const entry = { event, payload, at: Date.now() };
    this.events.push(entry);
    for (const w of this.waiters) w(entry);
  }

  get id() {
    return this.socket.id;
  }

  /// Resolves on `connect`; rejects on `connect_error` or after a timeout.
  connected(timeoutMs = EVENT_TIMEOUT_MS) {
    if (this.socket.connected) return Promise.resolve(this);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => done(new Error(`${this.label}: no connect within ${timeoutMs} ms`)), timeoutMs);
      const onConnect = () => done(null);
      const onError = (err) => done(new Error(`${this.label}: connect_error: ${err.message}`));
      const done = (err) => {
        clearTimeout(timer);
        this.socket.off('connect', onConnect);
        this.socket.off('connect_error', onError);
        if (err) reject(err);
        else resolve(this);
      };
      this.socket.on('connect', onConnect);
      this.socket.on('connect_error', onError);
    });
  }

  /// Resolves with the `connect_error` error; rejects if the socket connects or nothing happens.
  refused(timeoutMs = EVENT_TIMEOUT_MS) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => done(new Error(`${this.label}: neither connect nor connect_error in ${timeoutMs} ms`)), timeoutMs);
      const onConnect = () => done(new Error(`${this.label}: connected, but a connect_error was expected`));
      const onError = (err) => done(null, err);
      const done = (err, value) => {
        clearTimeout(timer);
        this.socket.off('connect', onConnect);
        this.socket.off('connect_error', onError);
        if (err) reject(err);
        else resolve(value);
      };
      if (this.connectErrors.length) return done(null, this.connectErrors[0]);
      this.socket.on('connect', onConnect);
      this.socket.on('connect_error', onError);
    });
  }

  /// Emits with an ack and resolves with the ack's payload (rejects after a timeout).
  async ack(event, ...args) {
    return this.socket.timeout(EVENT_TIMEOUT_MS).emitWithAck(event, ...args);
  }

  emit(event, ...args) {
    this.socket.emit(event, ...args);
  }

  /// Events received so far that match.
  received(event, pred = () => true) {
    return this.events.filter((e) => e.event === event && pred(e.payload)).map((e) => e.payload);
  }

  /// Waits for an event matching `pred` (already received ones count, from `since` on).
  waitFor(event, pred = () => true, { timeoutMs = EVENT_TIMEOUT_MS, since = 0 } = {}) {
    const found = this.events.slice(since).find((e) => e.event === event && pred(e.payload));
    if (found) return Promise.resolve(found.payload);
    return new Promise((resolve, reject) => {
      const waiter = (entry) => {
        if (entry.event === event && pred(entry.payload)) {
          clearTimeout(timer);
          this.waiters.delete(waiter);
          resolve(entry.payload);
        }
      };
      const timer = setTimeout(() => {
        this.waiters.delete(waiter);
        reject(new Error(`${this.label}: no '${event}' matching within ${timeoutMs} ms (${this.summary()})`));
      }, timeoutMs);
      this.waiters.add(waiter);
    });
  }

  /// What this client saw, in short: event counts, connection state, disconnect reasons.
  summary() {
    const counts = new Map();
    for (const e of this.events) counts.set(e.event, (counts.get(e.event) ?? 0) + 1);
    const seen = [...counts].map(([k, v]) => `${k} x${v}`).join(', ') || 'nothing';
    return `received: ${seen}; connected: ${this.socket.connected}; disconnects: ${JSON.stringify(this.disconnects)}`;
  }

  /// Waits for the message with this id.
  waitMessage(id, opts) {
    return this.waitFor('newGroupMessage', (m) => m?.id === id, opts);
  }

  /// How many times the message with this id arrived.
  countMessage(id) {
    return this.received('newGroupMessage', (m) => m?.id === id).length;
  }

  /// Events about one group.
  about(groupId) {
    return this.events.filter((e) => groupOf(e.event, e.payload) === groupId);
  }

  close() {
    this.socket.disconnect();
    this.socket.io.engine?.close?.();
  }
}

/// Tracks every client a test opens and closes them all at the end.
export class Clients {
  constructor(cluster) {
    this.cluster = cluster;
    this.all = [];
  }

  /// A client of gateway `gw` (index, modulo the gateway count) for (org, email), connected.
  async connect(gw, org, email, opts = {}) {
    const c = this.open(gw, { token: this.cluster.token(org, email), orgId: org }, { label: `${email}@${org}/gateway${gw + 1}`, ...opts });
    await c.connected();
    return c;
  }

  /// A client of gateway `gw` with the given auth (not awaited).
  open(gw, auth, opts = {}) {
    const url = this.cluster.gatewayUrls[gw % this.cluster.gatewayUrls.length];
    const c = new Client(url, auth, opts);
    this.all.push(c);
    return c;
  }

  closeAll() {
    for (const c of this.all) c.close();
    this.all = [];
  }

  /// The invariant of every test: no socket ever sees an event of another org's group.
  assertNoCrossOrg() {
    for (const c of this.all) assertNoCrossOrg(c);
  }
}

export function assertNoCrossOrg(client) {
  for (const { event, payload } of client.events) {
    const g = groupOf(event, payload);
    if (g && GROUP_ORG.has(g)) {
      assert.equal(GROUP_ORG.get(g), client.org, `${client.label} received '${event}' of a group of org ${GROUP_ORG.get(g)}`);
    }
    const org = payload?.orgId ?? payload?.group?.orgId;
    if (org !== undefined) {
      assert.equal(org, client.org, `${client.label} received '${event}' of org ${org}: ${JSON.stringify(payload)}`);
    }
  }
}

/// Polls `fn` until it returns a truthy value (returned) or the deadline passes (throws).
export async function eventually(fn, { timeoutMs = 5000, intervalMs = 100, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`${what} not reached within ${timeoutMs} ms (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    }
    await sleep(intervalMs);
  }
}

/// Asserts each client received the message with `id` exactly once, after a settle period.
export async function assertDeliveredOnce(clients, id) {
  await Promise.all(clients.map((c) => c.waitMessage(id)));
  await sleep(SETTLE_MS);
  for (const c of clients) assert.equal(c.countMessage(id), 1, `${c.label} received message ${id} ${c.countMessage(id)} times`);
}

/// Asserts none of the clients received the message with `id` (after a settle period).
export async function assertNotDelivered(clients, id, settleMs = SETTLE_MS) {
  await sleep(settleMs);
  for (const c of clients) assert.equal(c.countMessage(id), 0, `${c.label} received message ${id} it must not see`);
}

/// An ack error: `{ ok: false, error: { statusCode, message } }`.
export function assertAckError(ack, statusCode, messageRe) {
  assert.equal(ack?.ok, false, `expected an error ack, got ${JSON.stringify(ack)}`);
  assert.equal(ack.error?.statusCode, statusCode, `statusCode in ${JSON.stringify(ack)}`);
  assert.equal(typeof ack.error.message, 'string', `message in ${JSON.stringify(ack)}`);
  assert.ok(ack.error.message.length > 0, `empty message in ${JSON.stringify(ack)}`);
  if (messageRe) assert.match(ack.error.message, messageRe);
}

/// Prometheus metric value from a /metrics body.
export async function metric(url, name) {
  const res = await fetch(`${url}/metrics`, { signal: AbortSignal.timeout(5000) });
  assert.equal(res.status, 200);
  const text = await res.text();
  const m = new RegExp(`^${name}(?:\\{[^}]*\\})? ([0-9.eE+-]+)$`, 'm').exec(text);
  return m ? Number(m[1]) : undefined;
}
