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
import { after, afterEach, before, test } from 'node:test';
import { describeScaledOnly, startCluster } from './cluster.mjs';
import { Clients, Rest, SETTLE_MS, envNumber, eventually, sleep, uid } from './helpers.mjs';
import { Member, catchUp, checkDelivery, countBy, fmtCounts, fullHistory, prng, restSend, short } from './recipe.mjs';
import { privatePostgres, privateRedis } from './services.mjs';

process.env.E2E_ECHO_LOGS ??= 'none';

const SEED = envNumber('FAULT_SEED', crypto.randomInt(1, 2 ** 31));
const USERS = envNumber('FAULT_USERS', 24);
const GROUPS = envNumber('FAULT_GROUPS', 6);
const RATE = envNumber('FAULT_RATE', 10);
const PHASE_MS = envNumber('FAULT_PHASE_MS', 8000);
const PG_DOWN_MS = envNumber('FAULT_PG_DOWN_MS', 3000);
/// Hard cap on messages sent by test 1.
const MAX_MESSAGES = 600;
/// A send is retried (same clientMessageId) until acknowledged, at most this long (and at most
/// SEND_MAX_ATTEMPTS times, recipe.mjs).
const SEND_DEADLINE_MS = 60_000;
/// Processes run with the server defaults, except a per-socket send rate that the socket
/// senders (a few per second per user) cannot reach.
const FAULT_ENV = { SOCKET_SENDS_PER_SECOND: '50' };


describeScaledOnly('faults in the scaled topology (private Postgres and Redis)', 'its processes, Postgres or Redis', { timeout: 300_000 }, () => {
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
    const stuck = await catchUp(members, truth, { timeoutMs: 45_000 });
    if (stuck) problems.push(stuck);
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
    const delivery = checkDelivery(members, truth);
    problems.push(...delivery.problems);
    const { live, caughtUp, violations: socketViolations } = delivery;

    const sum = (k) => members.reduce((a, m) => a + m.stats[k], 0);
    const errors = countBy(records.flatMap((r) => r.errors));
    const lost = lostStored + delivery.lost;
    const duplicates = dupStored + delivery.duplicates;
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
