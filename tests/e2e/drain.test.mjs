// Graceful shutdown of a gateway (SIGTERM) in the scaled topology (2 API + 2 gateway processes,
// on the shared Postgres and Redis, which are not touched).
//
// Members follow the README's recipe (recipe.mjs: last seq per group, handshake `auth.sync`,
// sync on a gap) and move to the other gateway when their connection drops, as a load balancer
// would. 8 of them are on gateway 1 and 4 on gateway 2, in 2 groups; messages are posted over
// REST (both API pods, retried with their clientMessageId) at a steady pace before, during and
// after the shutdown. Then gateway 1 gets SIGTERM, and:
// - its /readyz stops answering 200 at once (503 while it drains, or the connection is refused
//   once it stopped listening), and never answers 200 again;
// - it exits with code 0 within SHUTDOWN_DRAIN_SECONDS + 3 s;
// - every socket that was on it saw a disconnect that socket.io-client would recover from by
//   itself ('transport close', `socket.active`; not 'io server disconnect'), and is connected to
//   gateway 2 within a few seconds;
// - no socket on gateway 2 was disconnected;
// - every member has every message of its groups exactly once and in seq order (compared with
//   the REST history, paged with `after`).
// It prints `drain test: sockets_moved=… messages=… lost=0 duplicates=0 exit_code=0 exit_ms=…`.
//
// Knobs (environment): DRAIN_SECONDS (the gateways' SHUTDOWN_DRAIN_SECONDS, 5), DRAIN_RATE
// (messages per second, 20), DRAIN_PHASE_MS (traffic before and after the shutdown, 3000),
// DRAIN_SEED (random groups and senders, printed). E2E_KEEP_LOGS=1 keeps the server logs.
//
//   cd tests/e2e && COMMUNITY_CHAT_BIN=/path/to/community-chat node --test drain.test.mjs

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { after, afterEach, before, test } from 'node:test';

import { describeScaledOnly, startCluster } from './cluster.mjs';
import { Rest, SETTLE_MS, envNumber, eventually, metric, sleep, uid } from './helpers.mjs';
import { Member, catchUp, checkDelivery, countBy, fmtCounts, fullHistory, lagging, prng, restSend } from './recipe.mjs';

const DRAIN_SECONDS = envNumber('DRAIN_SECONDS', 5);
const RATE = envNumber('DRAIN_RATE', 20);
const PHASE_MS = envNumber('DRAIN_PHASE_MS', 3000);
const SEED = envNumber('DRAIN_SEED', crypto.randomInt(1, 2 ** 31));
/// Members on gateway 1 (the one shut down) and on gateway 2.
const ON_GATEWAY1 = 8;
const ON_GATEWAY2 = 4;
/// The exit must come within SHUTDOWN_DRAIN_SECONDS and this much more.
const EXIT_SLACK_MS = 3000;
/// /readyz of gateway 1 must stop answering 200 within this long of the SIGTERM.
const NOT_READY_MS = 1000;
/// A socket of gateway 1 must be connected to gateway 2 within this long of its disconnect.
const MOVE_MS = 5000;
/// How long the members get to reach the last stored seq by themselves (live delivery and the
/// recipe) before the final syncGroups.
const SETTLE_LIVE_MS = 10_000;
/// A send is retried (same clientMessageId) until acknowledged, at most this long.
const SEND_DEADLINE_MS = 30_000;
const MAX_MESSAGES = 2000;

/// Polls /readyz until stopped, recording each answer (status, or how the connection failed)
/// with the time since `t0`.
function pollReady(url, t0) {
  const seen = [];
  let running = true;
  const done = (async () => {
    while (running) {
      const at = Date.now() - t0;
      let what;
      try {
        const res = await fetch(`${url}/readyz`, { signal: AbortSignal.timeout(1000) });
        await res.text();
        what = String(res.status);
      } catch (e) {
        const code = e.cause?.code ?? e.name;
        what = code === 'ECONNREFUSED' ? 'refused' : e.name === 'TimeoutError' ? 'timeout' : `closed(${code})`;
      }
      seen.push({ at, what });
      await sleep(20);
    }
  })();
  return {
    seen,
    stop: async () => {
      running = false;
      await done;
    },
  };
}

describeScaledOnly('graceful shutdown (SIGTERM) of a gateway in the scaled topology', 'its processes', { timeout: 180_000 }, () => {
  let cluster;
  const members = [];
  const run = uid();
  const org = `orgD-${run}`;
  const rest = (api, email) => new Rest(cluster, api, org, email);

  before(async () => {
    cluster = await startCluster({ mode: 'scaled', env: { SHUTDOWN_DRAIN_SECONDS: String(DRAIN_SECONDS) } });
  });

  after(async () => {
    await cluster?.stop();
  });

  afterEach(() => {
    for (const m of members) m.close();
  });

  test('SIGTERM: not ready at once, sockets move to the other gateway, nothing lost or repeated, exit 0 in time', { timeout: 120_000 }, async () => {
    const rand = prng(SEED);
    const pick = (arr) => arr[Math.floor(rand() * arr.length)];
    const started = Date.now();
    const log = (s) => process.stderr.write(`drain test [${((Date.now() - started) / 1000).toFixed(1)}s] ${s}\n`);
    log(`seed ${SEED} (DRAIN_SEED=${SEED} replays the same senders), SHUTDOWN_DRAIN_SECONDS=${DRAIN_SECONDS}`);

    // 12 users: u0..u7 on gateway 1, u8..u11 on gateway 2; two groups that mix both gateways,
    // three users in both.
    const email = (i) => `u${i}-${run}@example.com`;
    const groupSpecs = [
      [0, 1, 2, 3, 4, 5, 8, 9],
      [4, 5, 6, 7, 10, 11, 0],
    ];
    const groups = [];
    for (const [k, spec] of groupSpecs.entries()) {
      const [admin, ...others] = spec.map(email);
      const group = await rest(k, admin).createGroup({ name: `drain ${k}`, members: others });
      assert.equal(group.memberCount, spec.length);
      groups.push({ id: group.id, admin, members: spec.map(email) });
    }
    const users = Array.from({ length: ON_GATEWAY1 + ON_GATEWAY2 }, (_, i) => i);
    for (const i of users) {
      const mine = groups.filter((g) => g.members.includes(email(i))).map((g) => g.id);
      members.push(new Member({ cluster, org, email: email(i), groups: mine, rand }));
    }
    const onGw1 = members.slice(0, ON_GATEWAY1);
    const onGw2 = members.slice(ON_GATEWAY1);
    onGw1.forEach((m) => m.connect(0));
    onGw2.forEach((m) => m.connect(1));
    await eventually(() => members.every((m) => m.connected && !m.sock.handshake), { timeoutMs: 20_000, what: 'every member connected' });
    const [gw1Url, gw2Url] = cluster.gatewayUrls;
    await eventually(async () => (await metric(gw1Url, 'gateway_sockets_connected')) === ON_GATEWAY1
      && (await metric(gw2Url, 'gateway_sockets_connected')) === ON_GATEWAY2, { what: `gateway_sockets_connected ${ON_GATEWAY1} and ${ON_GATEWAY2}` });
    log(`${members.length} members connected: ${ON_GATEWAY1} on gateway 1, ${ON_GATEWAY2} on gateway 2, groups of ${groups.map((g) => g.members.length).join(' and ')}`);

    // Traffic: REST posts at a steady pace, alternating API 1 and API 2, each retried with its
    // clientMessageId until acknowledged.
    const records = [];
    const sends = [];
    let traffic = true;
    const trafficStart = Date.now();
    const sender = (async () => {
      const interval = 1000 / RATE;
      for (let i = 0; traffic && i < MAX_MESSAGES; i++) {
        const wait = trafficStart + i * interval - Date.now();
        if (wait > 0) await sleep(wait);
        const group = pick(groups);
        const from = pick(group.members);
        const rec = {
          i, cmid: `drain-${run}-${i}-${crypto.randomUUID()}`, groupId: group.id, from,
          content: `message ${i} from ${from.split('@')[0]}`, attempts: 0, errors: [], ack: null, fatal: null, sentAt: Date.now(),
        };
        records.push(rec);
        sends.push(restSend(cluster, cluster.token(org, from), org, rec, i % 2, Date.now() + SEND_DEADLINE_MS)
          .then((ack) => {
            rec.ack = ack;
          }, (e) => {
            rec.fatal = `threw: ${e.stack}`;
          }));
      }
    })();

    let exit = null;
    let exitMs = null;
    let ready = null;
    let sentBeforeSigterm = 0;
    let sigtermAt = 0;
    try {
      await sleep(PHASE_MS);
      sentBeforeSigterm = records.length;
      log(`${sentBeforeSigterm} messages posted before the SIGTERM`);

      // SIGTERM to gateway 1; /readyz polled from that moment until the process is gone.
      sigtermAt = Date.now();
      const gw1 = cluster.terminate('gateway1');
      ready = pollReady(gw1Url, sigtermAt);
      exit = await Promise.race([gw1.exited, sleep(DRAIN_SECONDS * 1000 + EXIT_SLACK_MS).then(() => null)]);
      exitMs = exit ? Date.now() - sigtermAt : null;
      await sleep(300); // a few refused connections after the exit
      await ready.stop();
      log(`gateway 1 ${exit ? `exited ${JSON.stringify(exit)} ${exitMs} ms after SIGTERM` : `still running ${DRAIN_SECONDS * 1000 + EXIT_SLACK_MS} ms after SIGTERM`}`);

      // The members of gateway 1 are on gateway 2 again.
      await eventually(() => onGw1.every((m) => m.connected && m.gateway === 1), { timeoutMs: MOVE_MS + 5000, what: 'the members of gateway 1 connected to gateway 2' })
        .catch((e) => log(e.message));
      log(`${onGw1.filter((m) => m.connected && m.gateway === 1).length} of ${ON_GATEWAY1} members of gateway 1 now on gateway 2`);
      await sleep(PHASE_MS);
    } finally {
      traffic = false;
      await sender;
      await Promise.all(sends);
    }
    log(`${records.length} messages posted (${records.length - sentBeforeSigterm} from the SIGTERM on); checking`);

    // The stored truth, over REST, paged with `after` (50 a page).
    const truth = new Map();
    for (const g of groups) truth.set(g.id, await fullHistory(rest(1, g.admin), g.id, { limit: 50 }));
    // The members reach the last seq by themselves (live, and the recipe's gap syncs); those
    // that do not are counted, then the recipe's final syncGroups.
    await eventually(() => !members.some((m) => lagging(m, truth)), { timeoutMs: SETTLE_LIVE_MS, what: 'members at the last seq' }).catch(() => {});
    const laggards = members.filter((m) => lagging(m, truth)).map((m) => m.label);
    const stuck = await catchUp(members, truth, { timeoutMs: 20_000 });
    await sleep(SETTLE_MS); // anything late (a duplicate) arrives now
    const delivery = checkDelivery(members, truth);
    const problems = [...delivery.problems];
    if (stuck) problems.push(stuck);

    // Stored once each, every post acknowledged.
    const stored = countBy([...truth.values()].flat().map((m) => m.clientMessageId));
    const unacked = records.filter((r) => !r.ack);
    for (const r of unacked) problems.push(`message ${r.i} never acknowledged after ${r.attempts} attempts: ${r.fatal ?? ''} errors ${fmtCounts(countBy(r.errors))}`);
    const storedTwice = [...stored].filter(([, n]) => n > 1);
    for (const [cmid, n] of storedTwice) problems.push(`clientMessageId ${cmid} stored ${n} times`);
    const notStored = records.filter((r) => r.ack && !stored.has(r.cmid));
    for (const r of notStored) problems.push(`message ${r.i} acknowledged (${r.ack.data.id} via ${r.ack.via}) but not in the history`);
    const messages = [...truth.values()].reduce((a, l) => a + l.length, 0);

    // How the sockets of gateway 1 left it, and how long until they were on gateway 2.
    const moves = onGw1.map((m) => {
      const [first, ...later] = m.connections;
      const next = later.find((c) => c.gw === 1 && c.connectedAt);
      return {
        label: m.label,
        reason: first?.disconnect?.reason ?? null,
        active: first?.disconnect?.active ?? null,
        afterSigtermMs: first?.disconnect ? first.disconnect.at - sigtermAt : null,
        moveMs: first?.disconnect && next ? next.connectedAt - first.disconnect.at : null,
        connections: m.connections.length,
        trail: m.trail.join('; '),
      };
    });
    const moved = moves.filter((x) => x.moveMs !== null && x.moveMs <= MOVE_MS);
    const gw2Disconnects = onGw2.filter((m) => m.connections.length !== 1 || m.connections[0].disconnect || !m.connected);

    const readySeen = countBy(ready.seen.map((o) => o.what));
    const firstNotReady = ready.seen.find((o) => o.what !== '200');
    const lastReady = ready.seen.filter((o) => o.what === '200').pop();
    const gw1Proc = cluster.proc('gateway1');
    const closingLine = gw1Proc.grep(/closing sockets so their clients reconnect elsewhere/)[0] ?? '(no "closing sockets" log line)';
    const deadlineHit = gw1Proc.grep(/drain deadline passed|took longer than the drain deadline/);
    const maxMove = Math.max(...moves.map((x) => x.moveMs ?? Infinity));
    const errors = countBy(records.flatMap((r) => r.errors));

    const line = `drain test: sockets_moved=${moved.length}/${ON_GATEWAY1} messages=${messages} lost=${delivery.lost + notStored.length} duplicates=${delivery.duplicates + storedTwice.length} `
      + `exit_code=${exit?.code ?? 'none'} exit_ms=${exitMs ?? 'none'}`;
    const detail = `drain test details: seed=${SEED} drain_s=${DRAIN_SECONDS} posted=${records.length} unacked=${unacked.length} retried_posts=${records.filter((r) => r.attempts > 1).length} post_errors=${fmtCounts(errors)} `
      + `disconnect_reasons=${fmtCounts(countBy(moves.map((x) => `${x.reason}${x.active ? '(active)' : '(inactive)'}`)))} `
      + `disconnect_after_sigterm_ms=${moves.map((x) => x.afterSigtermMs).join(',')} move_ms=${moves.map((x) => x.moveMs).join(',')} max_move_ms=${maxMove} `
      + `gateway2_disconnects=${gw2Disconnects.length} readyz=${fmtCounts(readySeen)} first_not_ready_ms=${firstNotReady?.at ?? 'none'} last_200_ms=${lastReady?.at ?? 'none'} `
      + `live=${delivery.live} caught_up=${delivery.caughtUp} needed_final_sync=${laggards.length} socket_violations=${delivery.violations.length} `
      + `deadline_warnings=${deadlineHit.length} total_s=${((Date.now() - started) / 1000).toFixed(1)}`;
    console.log(line);
    console.log(detail);
    console.log(`drain test: gateway 1 log: ${closingLine.trim()}`);
    if (laggards.length) console.log(`drain test: members behind before the final sync: ${laggards.join(', ')}`);

    // The process: not ready at once, exit 0 within the drain deadline plus slack.
    assert.ok(exit, `gateway 1 still running ${DRAIN_SECONDS * 1000 + EXIT_SLACK_MS} ms after SIGTERM\n${gw1Proc.tail(20)}`);
    assert.deepEqual({ code: exit.code, signal: exit.signal }, { code: 0, signal: null }, `gateway 1 exit after SIGTERM\n${gw1Proc.tail(20)}`);
    assert.ok(exitMs <= DRAIN_SECONDS * 1000 + EXIT_SLACK_MS, `gateway 1 exited ${exitMs} ms after SIGTERM`);
    const readyTrace = ready.seen.map((o) => `${o.at}:${o.what}`).join(' ');
    assert.ok(firstNotReady && firstNotReady.at <= NOT_READY_MS, `/readyz of gateway 1 still 200 ${NOT_READY_MS} ms after SIGTERM: ${readyTrace}`);
    assert.ok(!lastReady || lastReady.at < firstNotReady.at, `/readyz of gateway 1 answered 200 again after it stopped: ${readyTrace}`);
    const unexpected = ready.seen.filter((o) => o.what !== '200' && o.what !== '503' && o.what !== 'refused' && !o.what.startsWith('closed('));
    assert.deepEqual(unexpected, [], `/readyz of gateway 1 after SIGTERM: neither 503 nor a refused/closed connection: ${readyTrace}`);

    // The sockets of gateway 1: a disconnect socket.io-client recovers from by itself, then on
    // gateway 2 within MOVE_MS.
    for (const x of moves) {
      const what = `${x.label}: ${JSON.stringify(x)}`;
      assert.notEqual(x.reason, 'io server disconnect', `a server-side socket.io disconnect stops socket.io-client's reconnection: ${what}`);
      assert.equal(x.reason, 'transport close', what);
      assert.equal(x.active, true, `socket.active after the disconnect (socket.io-client would reconnect by itself): ${what}`);
      assert.ok(x.moveMs !== null && x.moveMs <= MOVE_MS, `connected to gateway 2 within ${MOVE_MS} ms of the disconnect: ${what}`);
    }
    assert.equal(moved.length, ON_GATEWAY1);
    assert.ok(onGw1.every((m) => m.connected && m.gateway === 1), 'every member of gateway 1 is on gateway 2 at the end');
    // Nobody on gateway 2 noticed.
    assert.deepEqual(gw2Disconnects.map((m) => `${m.label}: ${m.trail.join('; ')}`), [], 'sockets on gateway 2 must not be disconnected');
    assert.equal(await metric(gw2Url, 'gateway_sockets_connected'), ON_GATEWAY1 + ON_GATEWAY2, 'gateway_sockets_connected on gateway 2 at the end');

    // Messages: every one acknowledged and stored once, delivered once and in order to every member.
    assert.ok(records.length >= 2 * PHASE_MS * RATE / 1000 * 0.8, `only ${records.length} messages were posted`);
    assert.ok(records.length - sentBeforeSigterm > 0, 'messages were posted while gateway 1 drained');
    assert.equal(delivery.lost + notStored.length, 0, `lost\n${problems.join('\n')}`);
    assert.equal(delivery.duplicates + storedTwice.length, 0, `duplicates\n${problems.join('\n')}`);
    assert.deepEqual(problems, [], problems.join('\n'));
  });

  test('no server process crashed or panicked', () => {
    assert.deepEqual(cluster.crashed(), []);
    for (const p of cluster.procs) assert.deepEqual(p.grep(/panicked/), [], `${p.name} panicked`);
  });
});
