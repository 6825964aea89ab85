// Redis-specific end-to-end checks of the scaled topology (2 API + 2 gateway processes):
// - a gateway subscribes only to the channels of groups (and users) that its sockets are in,
//   and unsubscribes when the last one leaves (PUBSUB NUMSUB, /metrics);
// - Redis restarted mid-session: live delivery resumes without reconnecting clients.
// The cluster runs on a private Redis of its own (services.mjs: a free loopback port, started
// and restarted by this file), never on the machine's shared one, which other tests use.
// Skipped in the external topology (it reads Redis internals and restarts Redis) and when
// E2E_MODES leaves out `scaled`.

import assert from 'node:assert/strict';
import { after, afterEach, before, test } from 'node:test';

import { describeScaledOnly, startCluster } from './cluster.mjs';
import {
  Clients,
  Rest,
  SETTLE_MS,
  assertDeliveredOnce,
  eventually,
  metric,
  sleep,
  uid,
} from './helpers.mjs';
import { privateRedis } from './services.mjs';
import { TEST_ENV } from './suite.mjs';

/// The private Redis of this file (services.mjs), started in before().
let redis = null;
const redisCli = (...args) => redis.cli(...args);

async function numsub(channel) {
  const { stdout } = await redisCli('PUBSUB', 'NUMSUB', channel);
  const lines = stdout.trim().split('\n');
  return Number(lines[lines.length - 1]);
}

async function ping() {
  return redis.ping();
}

describeScaledOnly('Redis pub/sub of the scaled topology', 'its Redis or processes', { timeout: 120_000 }, () => {
  let cluster;
  let clients;
  /// Left by the restart test for the one after it.
  let afterRestart = null;
  const run = uid();
  const org = `orgR-${run}`;
  const alice = `alice-${run}@example.com`;
  const bob = `bob-${run}@example.com`;
  const carol = `carol-${run}@example.com`;
  const rest = (api, email) => new Rest(cluster, api, org, email);
  const groupChannel = (id) => `${cluster.redisPrefix}:${org}:group:${id}`;
  const userChannel = (email) => `${cluster.redisPrefix}:${org}:user:${email}`;
  const subs = (i) => metric(cluster.gatewayUrls[i], 'gateway_bus_subscriptions');
  const eventsIn = (i) => metric(cluster.gatewayUrls[i], 'gateway_events_in_total');
  /// Waits until NUMSUB of `channel` is `n` (subscription changes after a disconnect are async).
  const expectNumsub = (channel, n, what = channel) =>
    eventually(async () => (await numsub(channel)) === n, { timeoutMs: 5000, what: `NUMSUB ${what} == ${n}` });

  before(async () => {
    redis = await privateRedis();
    assert.ok(await ping(), `the private Redis is not answering on port ${redis.port}`);
    cluster = await startCluster({ mode: 'scaled', env: TEST_ENV, redisUrl: redis.url });
  });

  after(async () => {
    afterRestart?.clients.closeAll();
    try {
      await cluster?.stop();
    } finally {
      await redis?.destroy();
    }
  });

  afterEach(() => {
    clients?.closeAll();
  });

  test('a gateway subscribes only to channels its sockets need, and lets go after them', async () => {
    clients = new Clients(cluster);
    const c = clients;
    const group = await rest(0, alice).createGroup({ members: [bob] });
    const idle = await rest(0, carol).createGroup(); // carol never connects
    assert.equal(await numsub(groupChannel(group.id)), 0, 'no socket yet');
    assert.deepEqual([await subs(0), await subs(1)], [0, 0], 'gateway_bus_subscriptions with no socket');

    const a1 = await c.connect(0, org, alice);
    // Subscribed before `connect`: no waiting.
    assert.equal(await numsub(groupChannel(group.id)), 1, 'alice on gateway 1');
    assert.equal(await numsub(userChannel(alice)), 1);
    assert.deepEqual([await subs(0), await subs(1)], [2, 0], 'gateway 1: the group and alice; gateway 2: nothing');

    // Gateway 2 has no socket in the group: it receives no Redis traffic for it.
    const before2 = await eventsIn(1);
    const m = await rest(1, bob).post(group.id, 'only gateway 1 listens');
    await a1.waitMessage(m.id);
    await sleep(SETTLE_MS);
    assert.equal(await eventsIn(1), before2, 'gateway 2 received an event of a group it has no socket in');

    const a2 = await c.connect(0, org, alice);
    assert.equal(await numsub(groupChannel(group.id)), 1, 'a second socket on the same gateway: still one subscription');
    const b = await c.connect(1, org, bob);
    assert.equal(await numsub(groupChannel(group.id)), 2, 'one subscription per gateway');
    assert.equal(await numsub(userChannel(bob)), 1);

    b.close();
    await expectNumsub(groupChannel(group.id), 1, 'group after bob left gateway 2');
    await expectNumsub(userChannel(bob), 0, 'bob after he disconnected');
    await eventually(async () => (await subs(1)) === 0, { what: 'gateway 2 subscriptions back to 0' });

    assert.equal((await a1.ack('leaveGroup', { groupId: group.id })).ok, true);
    await sleep(200);
    assert.equal(await numsub(groupChannel(group.id)), 1, 'alice still has a socket in the room on gateway 1');
    assert.equal((await a2.ack('leaveGroup', { groupId: group.id })).ok, true);
    await expectNumsub(groupChannel(group.id), 0, 'group after both sockets left the room');
    assert.equal(await numsub(userChannel(alice)), 1, 'the user channel stays while alice is connected');
    assert.equal((await a2.ack('joinGroup', { groupId: group.id })).ok, true);
    assert.equal(await numsub(groupChannel(group.id)), 1, 'joinGroup subscribes before it answers');

    // Membership changes: added -> subscribed at once; removed -> let go.
    const frank = `frank-${run}@example.com`;
    const f = await c.connect(1, org, frank);
    assert.equal(await subs(1), 1, 'frank is in no group: only his user channel');
    await rest(0, alice).addMember(group.id, frank);
    await f.waitFor('addedToGroup');
    assert.equal(await numsub(groupChannel(group.id)), 2, 'subscribed when addedToGroup arrives');
    await rest(0, alice).removeMember(group.id, frank);
    await f.waitFor('removedFromGroup');
    await expectNumsub(groupChannel(group.id), 1, 'group after frank was removed');
    assert.equal(await subs(1), 1);

    // Deleted: nobody listens any more.
    await rest(0, alice).deleteGroup(group.id);
    await a2.waitFor('groupDeleted');
    await expectNumsub(groupChannel(group.id), 0, 'deleted group');
    assert.equal(await numsub(groupChannel(idle.id)), 0, 'a group with no socket connected anywhere');

    // Only the prefix's own channels, and only the ones needed.
    const { stdout } = await redisCli('PUBSUB', 'CHANNELS', `${cluster.redisPrefix}:*`);
    const channels = stdout.split('\n').map((s) => s.trim()).filter(Boolean).sort();
    assert.deepEqual(channels, [userChannel(alice), userChannel(frank)].sort());

    c.closeAll();
    await expectNumsub(userChannel(alice), 0, 'alice after she disconnected');
    await expectNumsub(userChannel(frank), 0, 'frank after he disconnected');
    await eventually(async () => (await subs(0)) === 0 && (await subs(1)) === 0, { what: 'gateway subscriptions back to 0' });
  });

  test('Redis restarted mid-session: live delivery resumes without reconnecting clients', { timeout: 90_000 }, async () => {
    clients = new Clients(cluster);
    const c = clients;
    const group = await rest(0, alice).createGroup({ members: [bob] });
    const frank = `frank-${uid()}@example.com`;
    const dana = `dana-${uid()}@example.com`;
    const frankGroup = await rest(0, alice).createGroup({ members: [frank] });
    const danaGroup = await rest(1, dana).createGroup();
    // A group whose first message is written while Redis is down.
    const quiet = await rest(0, alice).createGroup({ members: [bob] });
    const opts = { reconnection: true };
    const a = await c.connect(0, org, alice, opts);
    const b = await c.connect(1, org, bob, opts);
    const f = await c.connect(1, org, frank, opts);
    const ids = [a.id, b.id];
    const m0 = await rest(0, alice).post(group.id, 'before the restart');
    await assertDeliveredOnce([a, b], m0.id);
    assert.equal(await numsub(groupChannel(frankGroup.id)), 2);

    let during;
    let d;
    try {
      await redis.stop('shutdown'); // SHUTDOWN NOSAVE
      await eventually(async () => !(await ping()), { timeoutMs: 10_000, what: 'Redis down' });
      // Writes still commit while Redis is down (Postgres is the source of truth).
      during = await rest(1, bob).post(group.id, 'while Redis is down');
      await rest(0, bob).post(quiet.id, 'the first message of a group, while Redis is down');
      // Sockets come and go meanwhile: gateway 2 no longer needs frank's channels, gateway 1
      // needs dana's.
      f.close();
      d = await c.connect(0, org, dana, { ...opts, extra: { timeout: 10_000 } });
      await sleep(500);
    } finally {
      await redis.start();
    }

    // Clients that stayed connected receive new messages within a few seconds.
    const deadline = Date.now() + 15_000;
    let delivered = null;
    let attempt = 0;
    while (!delivered && Date.now() < deadline) {
      attempt += 1;
      const { status, body } = await rest(0, alice).call('POST', `/${group.id}/messages`, { content: `after the restart ${attempt}` });
      if (status === 201) {
        try {
          await Promise.all([a.waitMessage(body.id, { timeoutMs: 1500 }), b.waitMessage(body.id, { timeoutMs: 1500 })]);
          delivered = body;
        } catch {
          // not yet: try again
        }
      } else {
        await sleep(500);
      }
    }
    assert.ok(delivered, `no message posted after the Redis restart reached both sockets within 15 s (${attempt} tries)`);
    assert.deepEqual([a.id, b.id], ids, 'same socket ids');
    assert.deepEqual([a.disconnects, b.disconnects], [[], []], 'no disconnect');
    assert.deepEqual([a.reconnects, b.reconnects], [0, 0], 'no reconnect');

    // Subscriptions survived the restart: one per gateway, and typing crosses pods again.
    assert.equal(await numsub(groupChannel(group.id)), 2);
    assert.equal(await numsub(userChannel(alice)), 1);
    assert.equal(await numsub(userChannel(bob)), 1);
    // What changed while Redis was down is what is subscribed now.
    await expectNumsub(groupChannel(frankGroup.id), 1, 'frank\'s group after he left gateway 2 during the outage');
    await expectNumsub(userChannel(frank), 0, 'frank\'s user channel after he left during the outage');
    await expectNumsub(groupChannel(danaGroup.id), 1, 'dana\'s group after she connected during the outage');
    await expectNumsub(userChannel(dana), 1, 'dana\'s user channel');
    const md = await rest(1, dana).post(danaGroup.id, 'dana connected while Redis was down');
    await assertDeliveredOnce([d], md.id);
    const m1 = await rest(1, bob).post(group.id, 'steady again');
    await assertDeliveredOnce([a, b], m1.id);
    b.emit('groupTyping', { groupId: group.id });
    assert.deepEqual(await a.waitFor('groupTyping'), { groupId: group.id, from: bob, typing: true });
    for (const url of [...cluster.apiUrls, ...cluster.gatewayUrls]) {
      await eventually(async () => (await fetch(`${url}/readyz`)).status === 200, { what: `${url}/readyz` });
    }

    // No gap: the message written while Redis was down reached each socket too (gap fill), and
    // each socket saw the group's messages in seq order with no gap.
    for (const s of [a, b]) {
      const seqs = s.received('newGroupMessage', (m) => m.groupId === group.id).map((m) => m.seq);
      assert.deepEqual(seqs, Array.from({ length: m1.seq }, (_, i) => i + 1), `${s.label} seqs ${seqs.join(',')} (the message of the outage was seq ${during.seq})`);
    }
    // The next test checks the group whose first message was written during the outage.
    afterRestart = { quiet, sockets: [a, b], clients: c };
    clients = null;
  });

  test('a group\'s first message written while Redis was down still reaches the sockets connected then', async (t) => {
    if (!afterRestart) return t.skip('the Redis restart test did not get that far');
    const { quiet, sockets } = afterRestart;
    try {
      const q2 = await rest(1, alice).post(quiet.id, 'the second message of the quiet group');
      await Promise.all(sockets.map((s) => s.waitMessage(q2.id)));
      await sleep(SETTLE_MS);
      for (const s of sockets) {
        const seqs = s.received('newGroupMessage', (m) => m.groupId === quiet.id).map((m) => m.seq);
        assert.deepEqual(seqs, [1, 2], `${s.label}: seqs of a group whose seq 1 was written while Redis was down`);
      }
    } finally {
      afterRestart.clients.closeAll();
      afterRestart = null;
    }
  });

  test('no server process crashed', () => {
    assert.deepEqual(cluster.crashed(), []);
    for (const p of cluster.procs) assert.deepEqual(p.grep(/panicked/), [], `${p.name} panicked`);
  });
});
