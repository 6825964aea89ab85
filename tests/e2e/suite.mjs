// The socket.io end-to-end suite, defined once and run against each topology: scaled (2 API +
// 2 gateway processes, Postgres, Redis), standalone (`serve`), or an external one.

import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';

import { mintJwt, requestedModes, startCluster } from './cluster.mjs';
import {
  Clients,
  Rest,
  SETTLE_MS,
  assertAckError,
  assertDeliveredOnce,
  assertNoCrossOrg,
  assertNotDelivered,
  metric,
  sleep,
  uid,
} from './helpers.mjs';

/// Environment of the processes under test (the rate limit is low so a test can reach it).
export const TEST_ENV = { SOCKET_SENDS_PER_SECOND: '5' };
/// The per-socket send rate of the processes under test: ours run with 5; an external topology
/// says its own with E2E_SOCKET_SENDS_PER_SECOND (the server's default is 20).
const SENDS_PER_SECOND = Number(
  process.env.E2E_API_URLS ? process.env.E2E_SOCKET_SENDS_PER_SECOND || 20 : TEST_ENV.SOCKET_SENDS_PER_SECOND,
);

export function topologies() {
  return process.env.E2E_API_URLS && process.env.E2E_GATEWAY_URLS && process.env.E2E_JWT_SECRET
    ? ['external']
    : requestedModes();
}

export function defineGatewaySuite(mode) {
  describe(`socket.io e2e (${mode})`, { timeout: 120_000 }, () => {
    let cluster;
    let clients;
    const run = uid();
    const A = `orgA-${run}`;
    const B = `orgB-${run}`;
    const alice = `alice-${run}@example.com`;
    const bob = `bob-${run}@example.com`;
    const carol = `carol-${run}@example.com`;
    const dave = `dave-${run}@example.com`; // in org A, never a member of anything
    // Spies: sockets that must never receive anything at all.
    let spies = [];
    const rest = (api, org, email) => new Rest(cluster, api, org, email);

    before(async () => {
      cluster = await startCluster({ mode: mode === 'external' ? 'scaled' : mode, env: TEST_ENV });
      const spyClients = new Clients(cluster);
      spies = [
        await spyClients.connect(0, A, dave),
        await spyClients.connect(1, A, dave),
        // The same e-mails in another org are other users: they are in no group of org B.
        await spyClients.connect(0, B, alice),
        await spyClients.connect(1, B, bob),
      ];
      spies.closeAll = () => spyClients.closeAll();
      // Org B is busy too: its events must not reach org A (checked by assertNoCrossOrg).
      const zed = `zed-${run}@example.com`;
      const orgB = new Rest(cluster, 1, B, zed);
      const groupB = await orgB.createGroup({ name: 'org B group', members: [carol] });
      await orgB.post(groupB.id, 'org B traffic');
    });

    after(async () => {
      spies.closeAll?.();
      await cluster?.stop();
    });

    afterEach(() => {
      try {
        clients?.assertNoCrossOrg();
      } finally {
        clients?.closeAll();
      }
    });

    const fresh = () => {
      clients?.closeAll();
      clients = new Clients(cluster);
      return clients;
    };

    test('handshake failures answer connect_error with a clear message', async () => {
      const c = fresh();
      const good = cluster.token(A, alice);
      const cases = [
        ['missing auth', undefined, /missing token/],
        ['missing token', { orgId: A }, /missing token/],
        ['empty token', { token: '', orgId: A }, /missing token/],
        ['missing orgId', { token: good }, /missing orgId/],
        ['malformed token', { token: 'not-a-jwt', orgId: A }, /malformed/],
        ['bad signature', { token: mintJwt('another-secret-0123456789', { org: A, email: alice }), orgId: A }, /signature/],
        [
          'expired token',
          { token: mintJwt(cluster.secret, { org: A, email: alice, iat: nowS() - 7200, exp: nowS() - 3600 }), orgId: A },
          /expired/,
        ],
        ['token without exp', { token: mintJwt(cluster.secret, { claims: { email: alice, orgId: A } }), orgId: A }, /exp/],
        ['token org is not orgId', { token: good, orgId: B }, /org does not match/],
        ['orgId with a colon', { token: good, orgId: 'a:b' }, /orgid/i],
      ];
      for (const [i, [what, auth, re]] of cases.entries()) {
        const client = c.open(i % 2, auth, { label: what }); // both gateways
        const err = await client.refused();
        assert.equal(typeof err.message, 'string', what);
        assert.match(err.message, re, `${what}: connect_error message '${err.message}'`);
        client.close();
      }
      // The gateways still accept a good handshake afterwards.
      await c.connect(0, A, alice);
      await c.connect(1, A, alice);
    });

    test('a REST post on API 1 reaches members on both gateways exactly once, and nobody else', async () => {
      const c = fresh();
      const group = await rest(0, A, alice).createGroup({ members: [bob, carol] });
      const members = [
        await c.connect(0, A, alice),
        await c.connect(1, A, alice),
        await c.connect(1, A, bob),
        await c.connect(0, A, carol),
      ];
      const message = await rest(0, A, alice).post(group.id, 'hello from REST');
      assert.equal(message.seq, 1);
      await assertDeliveredOnce(members, message.id);
      for (const m of members) {
        assert.deepEqual(m.received('newGroupMessage', (x) => x.id === message.id)[0], message, 'socket message equals REST');
      }
      // A second one, from the other API pod, by another member.
      const second = await rest(1, A, bob).post(group.id, 'hello from API 2');
      assert.equal(second.seq, 2);
      await assertDeliveredOnce(members, second.id);
      assertSpiesSilent();
    });

    test('a socket send on gateway 2 reaches REST history and sockets on gateway 1', async () => {
      const c = fresh();
      const group = await rest(0, A, alice).createGroup({ members: [bob] });
      const aliceGw1 = await c.connect(0, A, alice);
      const bobGw2 = await c.connect(1, A, bob);
      const bobGw1 = await c.connect(0, A, bob);
      const clientMessageId = `cm-${uid()}`;
      const ack = await bobGw2.ack('sendGroupMessage', { groupId: group.id, content: 'from a socket', clientMessageId });
      assert.equal(ack.ok, true, JSON.stringify(ack));
      assert.equal(ack.replayed, false);
      const sent = ack.data;
      assert.equal(sent.groupId, group.id);
      assert.equal(sent.orgId, A);
      assert.equal(sent.from, bob);
      assert.equal(sent.content, 'from a socket');
      assert.equal(sent.contentType, 'text');
      assert.equal(sent.clientMessageId, clientMessageId);
      assert.equal(sent.seq, 1);
      // The sender's own socket gets it too (clients de-duplicate by id).
      await assertDeliveredOnce([aliceGw1, bobGw2, bobGw1], sent.id);
      assert.deepEqual(aliceGw1.received('newGroupMessage')[0], sent);
      for (const api of cluster.apiUrls.keys()) {
        const history = await rest(api, A, alice).history(group.id);
        assert.deepEqual(history.data[0], sent, `history on API ${api + 1}`);
      }
      // The same clientMessageId again: the stored message, replayed, and nothing new emitted.
      const again = await bobGw2.ack('sendGroupMessage', { groupId: group.id, content: 'from a socket', clientMessageId });
      assert.equal(again.ok, true);
      assert.equal(again.replayed, true);
      assert.deepEqual(again.data, sent);
      await sleep(SETTLE_MS);
      for (const s of [aliceGw1, bobGw2, bobGw1]) assert.equal(s.received('newGroupMessage').length, 1, s.label);
      // Without an ack the send works as well.
      bobGw2.emit('sendGroupMessage', { groupId: group.id, content: 'no ack' });
      const noAck = await aliceGw1.waitFor('newGroupMessage', (m) => m.content === 'no ack');
      assert.equal(noAck.seq, 2);
      assert.equal(bobGw2.received('exception').length, 0);
      assertSpiesSilent();
    });

    test('typing crosses pods and skips the sender', async () => {
      const c = fresh();
      const group = await rest(0, A, alice).createGroup({ members: [bob, carol] });
      const bobGw2 = await c.connect(1, A, bob);
      const others = [await c.connect(0, A, alice), await c.connect(1, A, alice), await c.connect(0, A, carol)];
      const ack = await bobGw2.ack('groupTyping', { groupId: group.id });
      assert.equal(ack.ok, true, JSON.stringify(ack));
      for (const o of others) {
        const ev = await o.waitFor('groupTyping');
        assert.deepEqual(ev, { groupId: group.id, from: bob, typing: true }, o.label);
      }
      bobGw2.emit('groupTyping', { groupId: group.id, typing: false });
      for (const o of others) {
        const ev = await o.waitFor('groupTyping', (t) => t.typing === false);
        assert.deepEqual(ev, { groupId: group.id, from: bob, typing: false }, o.label);
      }
      await sleep(SETTLE_MS);
      for (const o of others) assert.equal(o.received('groupTyping').length, 2, `${o.label}: exactly two typing events`);
      assert.equal(bobGw2.received('groupTyping').length, 0, 'the sender gets no typing event of its own');
      assert.equal(bobGw2.received('exception').length, 0);
      // Typing in a group the socket is not in is refused.
      const other = await rest(0, A, alice).createGroup();
      assertAckError(await bobGw2.ack('groupTyping', { groupId: other.id }), 403);
      assertSpiesSilent();
    });

    test('each socket receives a group\'s messages in seq order with no gap while two API pods race', async () => {
      const c = fresh();
      const group = await rest(0, A, alice).createGroup({ members: [bob] });
      const sockets = [await c.connect(0, A, alice), await c.connect(1, A, bob)];
      const writers = [rest(0, A, alice), rest(1, A, bob)];
      // A first message alone: the race of a group's very first messages is the next test's.
      const first = await writers[0].post(group.id, 'first');
      await Promise.all(sockets.map((s) => s.waitMessage(first.id)));
      const n = 25;
      const posted = await Promise.all(Array.from({ length: n - 1 }, (_, i) => writers[i % 2].post(group.id, `race ${i}`)));
      const seqs = [first, ...posted].map((m) => m.seq).sort((a, b) => a - b);
      assert.deepEqual(seqs, Array.from({ length: n }, (_, i) => i + 1), 'seq is 1..n with no gap');
      for (const s of sockets) {
        await s.waitFor('newGroupMessage', (m) => m.seq === n);
        await sleep(SETTLE_MS);
        const got = s.received('newGroupMessage').map((m) => m.seq);
        assert.deepEqual(got, seqs, `${s.label} received seqs ${got.join(',')}`);
      }
    });

    test('the first messages of new groups, posted at once on two API pods, all reach each socket', async () => {
      const c = fresh();
      const groups = [];
      for (let i = 0; i < 60; i++) groups.push(await rest(i % 2, A, alice).createGroup({ members: [bob] }));
      const sockets = [await c.connect(0, A, alice), await c.connect(1, A, bob)];
      const writers = [rest(0, A, alice), rest(1, A, bob)];
      // A few groups at a time, each group's first messages on both API pods at the same moment.
      const posted = [];
      for (let i = 0; i < groups.length; i += 3) {
        const batch = groups.slice(i, i + 3);
        posted.push(...(await Promise.all(batch.flatMap((g) => [0, 1, 2].map((k) => writers[k % 2].post(g.id, `first ${k}`))))));
      }
      await Promise.all(sockets.flatMap((s) => posted.map((m) => s.waitMessage(m.id, { timeoutMs: 2000 }).catch(() => null))));
      await sleep(SETTLE_MS);
      const wrong = [];
      for (const s of sockets) {
        for (const g of groups) {
          const seqs = s.received('newGroupMessage', (m) => m.groupId === g.id).map((m) => m.seq);
          if (seqs.join() !== '1,2,3') wrong.push(`${s.label}: group ${g.id} got seqs [${seqs}]`);
        }
      }
      if (wrong.length) {
        const dropped = await Promise.all(cluster.gatewayUrls.map((u) => metric(u, 'gateway_duplicates_dropped_total').catch(() => '?')));
        assert.fail(`${wrong.length} of ${sockets.length * groups.length} (socket, group) pairs missed messages ` +
          `(gateway_duplicates_dropped_total per gateway: ${dropped}):\n${wrong.join('\n')}`);
      }
    });

    test('auto-join: at connect a socket is in all its groups', async () => {
      const c = fresh();
      const g1 = await rest(0, A, alice).createGroup({ members: [bob] });
      const g2 = await rest(1, A, carol).createGroup({ members: [bob], type: 'public' });
      const notMine = await rest(0, A, alice).createGroup({ members: [carol] });
      const bobGw2 = await c.connect(1, A, bob);
      // Posted right after connect: nothing published after `connect` may miss the socket.
      const [m1, m2, m3] = await Promise.all([
        rest(0, A, alice).post(g1.id, 'to g1'),
        rest(0, A, carol).post(g2.id, 'to g2'),
        rest(1, A, alice).post(notMine.id, 'not for bob'),
      ]);
      await assertDeliveredOnce([bobGw2], m1.id);
      assert.equal(bobGw2.countMessage(m2.id), 1);
      assert.equal(bobGw2.countMessage(m3.id), 0, 'a group bob is not in');
    });

    test('leaveGroup stops delivery to that socket only; joinGroup resumes it; only members may join', async () => {
      const c = fresh();
      const group = await rest(0, A, alice).createGroup({ members: [bob] });
      const bobGw2 = await c.connect(1, A, bob);
      const bobGw1 = await c.connect(0, A, bob);
      const aliceGw2 = await c.connect(1, A, alice);
      const left = await bobGw2.ack('leaveGroup', { groupId: group.id });
      assert.deepEqual(left, { ok: true, data: { groupId: group.id } });
      const m1 = await rest(0, A, alice).post(group.id, 'after bob left on gw2');
      await assertDeliveredOnce([bobGw1, aliceGw2], m1.id);
      assert.equal(bobGw2.countMessage(m1.id), 0, 'a socket that left the room gets nothing');
      // Leaving again is harmless.
      assert.equal((await bobGw2.ack('leaveGroup', { groupId: group.id })).ok, true);
      const joined = await bobGw2.ack('joinGroup', { groupId: group.id });
      assert.deepEqual(joined, { ok: true, data: { groupId: group.id } });
      // Joining twice does not double deliveries.
      assert.equal((await bobGw2.ack('joinGroup', { groupId: group.id })).ok, true);
      const m2 = await rest(1, A, alice).post(group.id, 'after bob joined again');
      await assertDeliveredOnce([bobGw2, bobGw1, aliceGw2], m2.id);
      // Non-members: a private group is 404, a public one 403; another org's group is 404.
      const daveC = await c.connect(0, A, dave);
      assertAckError(await daveC.ack('joinGroup', { groupId: group.id }), 404);
      const pub = await rest(0, A, alice).createGroup({ type: 'public' });
      assertAckError(await daveC.ack('joinGroup', { groupId: pub.id }), 403);
      const foreign = await rest(0, B, `zed-${run}@example.com`).createGroup({ members: [dave] });
      assertAckError(await daveC.ack('joinGroup', { groupId: foreign.id }), 404);
      const m3 = await rest(0, A, alice).post(group.id, 'dave is not in');
      await assertNotDelivered([daveC], m3.id);
      assertSpiesSilent();
    });

    test('a socket that left a room and joined again gets only what was posted after it joined', async () => {
      const c = fresh();
      const group = await rest(0, A, alice).createGroup({ members: [bob] });
      const aliceGw1 = await c.connect(0, A, alice);
      const bobGw2 = await c.connect(1, A, bob); // bob's only socket, and the only one of gateway 2 in the room
      const m1 = await rest(0, A, alice).post(group.id, 'bob is in');
      await assertDeliveredOnce([aliceGw1, bobGw2], m1.id);
      assert.equal((await bobGw2.ack('leaveGroup', { groupId: group.id })).ok, true);
      const away = [];
      for (let i = 0; i < 3; i++) away.push(await rest(i % 2, A, alice).post(group.id, `while bob is away ${i}`));
      await aliceGw1.waitMessage(away[2].id);
      assert.equal((await bobGw2.ack('joinGroup', { groupId: group.id })).ok, true);
      const m2 = await rest(0, A, alice).post(group.id, 'bob is back');
      await assertDeliveredOnce([aliceGw1, bobGw2], m2.id);
      // Like standalone: nothing posted while the socket was out of the room is pushed to it
      // as a live message (it reads history for those).
      assert.deepEqual(
        bobGw2.received('newGroupMessage').map((m) => m.seq),
        [m1.seq, m2.seq],
        'newGroupMessage seqs on the socket that left and joined again',
      );
    });

    test('a client that reconnects after a busy period gets the next message at once and is not flooded off', async () => {
      const c = fresh();
      const group = await rest(0, A, alice).createGroup({ members: [bob] });
      const aliceGw1 = await c.connect(0, A, alice);
      const bobGw2 = await c.connect(1, A, bob); // gateway 2's only socket in the group
      const m1 = await rest(1, A, alice).post(group.id, 'before bob goes offline');
      await assertDeliveredOnce([aliceGw1, bobGw2], m1.id);
      bobGw2.close();
      // More messages than SOCKET_MAX_QUEUED_PACKETS (256 by default) while bob is offline.
      const busy = 300;
      const writers = [rest(0, A, alice), rest(1, A, alice)];
      let next = 0;
      await Promise.all(
        Array.from({ length: 8 }, async () => {
          while (next < busy) {
            const i = next++;
            await writers[i % 2].post(group.id, `busy ${i}`);
          }
        }),
      );
      await aliceGw1.waitFor('newGroupMessage', (m) => m.seq === busy + 1, { timeoutMs: 15_000 });
      const bobAgain = await c.connect(1, A, bob);
      const m2 = await rest(0, A, alice).post(group.id, 'bob is back online');
      await assertDeliveredOnce([bobAgain], m2.id);
      assert.equal(bobAgain.socket.connected, true, 'still connected');
      assert.deepEqual(bobAgain.disconnects, [], 'not disconnected as a slow client');
      assert.deepEqual(bobAgain.received('newGroupMessage').map((m) => m.seq), [m2.seq], 'only the new message is pushed live');
    });

    test('a member added while connected gets addedToGroup and that group\'s messages at once', async () => {
      const c = fresh();
      const frank = `frank-${uid()}@example.com`;
      const group = await rest(0, A, alice).createGroup({ members: [bob] });
      const frankGw1 = await c.connect(0, A, frank);
      const frankGw2 = await c.connect(1, A, frank);
      const bobGw2 = await c.connect(1, A, bob);
      const pre = await rest(0, A, alice).post(group.id, 'before frank');
      await bobGw2.waitMessage(pre.id);
      await rest(0, A, alice).addMember(group.id, frank);
      for (const f of [frankGw1, frankGw2]) {
        const added = await f.waitFor('addedToGroup');
        assert.equal(added.group.id, group.id, f.label);
        assert.equal(added.group.orgId, A);
        assert.equal(added.group.name, group.name);
      }
      assert.equal(frankGw1.received('addedToGroup')[0].group.myRole, 'member', 'myRole in addedToGroup');
      const memberAdded = await bobGw2.waitFor('groupMemberAdded');
      assert.deepEqual(memberAdded, { groupId: group.id, member: { email: frank, role: 'member' } });
      // Right after addedToGroup: the room is joined and the gateway subscribed.
      const m = await rest(1, A, bob).post(group.id, 'welcome frank');
      await assertDeliveredOnce([frankGw1, frankGw2, bobGw2], m.id);
      assert.equal(frankGw1.countMessage(pre.id), 0);
      // A socket opened now is in the room as well.
      const frankLater = await c.connect(1, A, frank);
      const m2 = await rest(0, A, alice).post(group.id, 'later');
      await assertDeliveredOnce([frankLater, frankGw1], m2.id);
      // Changing frank's role is not a second addedToGroup.
      await rest(0, A, alice).addMember(group.id, frank, 'admin');
      await bobGw2.waitFor('groupMemberAdded', (e) => e.member.role === 'admin');
      await sleep(SETTLE_MS);
      assert.equal(frankGw1.received('addedToGroup').length, 1);
      assertSpiesSilent();
    });

    test('members listed at group creation who are connected get addedToGroup and its messages at once', async () => {
      const c = fresh();
      const erin = `erin-${uid()}@example.com`;
      const erinGw1 = await c.connect(0, A, erin);
      const erinGw2 = await c.connect(1, A, erin);
      const bobGw1 = await c.connect(0, A, bob);
      const creatorGw2 = await c.connect(1, A, alice);
      const group = await rest(1, A, alice).createGroup({ members: [erin, { email: bob, role: 'admin' }] });
      const roles = { [erin]: 'member', [bob]: 'admin', [alice]: 'admin' };
      for (const [s, email] of [[erinGw1, erin], [erinGw2, erin], [bobGw1, bob], [creatorGw2, alice]]) {
        const added = await s.waitFor('addedToGroup');
        assert.equal(added.group.id, group.id, s.label);
        assert.equal(added.group.myRole, roles[email], `${s.label} myRole`);
      }
      const m = await rest(0, A, erin).post(group.id, 'thanks for adding me');
      await assertDeliveredOnce([erinGw1, erinGw2, bobGw1, creatorGw2], m.id);
      // The e-mail claim is case-insensitive: the same user, the same rooms.
      const shouting = c.open(1, { token: cluster.token(A, erin.toUpperCase()), orgId: A }, { label: 'ERIN' });
      await shouting.connected();
      const m2 = await rest(0, A, alice).post(group.id, 'to every erin');
      await assertDeliveredOnce([erinGw1, shouting], m2.id);
      assertSpiesSilent();
    });

    test('a member removed while connected gets removedFromGroup and nothing more of that group', async () => {
      const c = fresh();
      const frank = `frank-${uid()}@example.com`;
      const group = await rest(0, A, alice).createGroup({ members: [bob, frank] });
      const frankGw1 = await c.connect(0, A, frank);
      const frankGw2 = await c.connect(1, A, frank);
      const bobGw2 = await c.connect(1, A, bob);
      const aliceGw1 = await c.connect(0, A, alice);
      const m0 = await rest(0, A, alice).post(group.id, 'frank is in');
      await assertDeliveredOnce([frankGw1, frankGw2], m0.id);
      await rest(1, A, alice).removeMember(group.id, frank);
      for (const f of [frankGw1, frankGw2]) {
        assert.deepEqual(await f.waitFor('removedFromGroup'), { groupId: group.id }, f.label);
      }
      for (const s of [bobGw2, aliceGw1]) {
        assert.deepEqual(await s.waitFor('groupMemberRemoved'), { groupId: group.id, email: frank }, s.label);
      }
      const since = frankGw1.events.length;
      const since2 = frankGw2.events.length;
      const m1 = await rest(0, A, alice).post(group.id, 'frank is out');
      await bobGw2.ack('groupTyping', { groupId: group.id });
      await assertDeliveredOnce([bobGw2, aliceGw1], m1.id);
      assert.deepEqual(frankGw1.events.slice(since).map((e) => e.event), [], 'frank (gw1) receives nothing more');
      assert.deepEqual(frankGw2.events.slice(since2).map((e) => e.event), [], 'frank (gw2) receives nothing more');
      assertAckError(await frankGw1.ack('joinGroup', { groupId: group.id }), 404);
      assertAckError(await frankGw1.ack('sendGroupMessage', { groupId: group.id, content: 'let me in' }), 404);
      // Leaving by oneself over REST works the same way.
      await rest(0, A, bob).removeMember(group.id, bob);
      assert.deepEqual(await bobGw2.waitFor('removedFromGroup'), { groupId: group.id });
      const m2 = await rest(0, A, alice).post(group.id, 'bob left');
      await assertDeliveredOnce([aliceGw1], m2.id);
      assert.equal(bobGw2.countMessage(m2.id), 0);
      assertSpiesSilent();
    });

    test('a group deleted while connected: groupDeleted, then nothing', async () => {
      const c = fresh();
      const group = await rest(0, A, alice).createGroup({ members: [bob] });
      const keep = await rest(0, A, alice).createGroup({ members: [bob] });
      const sockets = [await c.connect(0, A, alice), await c.connect(1, A, bob), await c.connect(1, A, alice)];
      await rest(1, A, alice).call('PATCH', `/${group.id}`, { name: 'renamed' }, { expect: 200 });
      for (const s of sockets) {
        const ev = await s.waitFor('groupUpdated');
        assert.equal(ev.group.id, group.id);
        assert.equal(ev.group.name, 'renamed');
      }
      await rest(0, A, alice).deleteGroup(group.id);
      for (const s of sockets) assert.deepEqual(await s.waitFor('groupDeleted'), { groupId: group.id }, s.label);
      const counts = sockets.map((s) => s.about(group.id).length);
      await rest(0, A, alice).call('POST', `/${group.id}/messages`, { content: 'gone' }, { expect: 404 });
      assertAckError(await sockets[1].ack('sendGroupMessage', { groupId: group.id, content: 'gone' }), 404);
      assertAckError(await sockets[1].ack('joinGroup', { groupId: group.id }), 404);
      assertAckError(await sockets[1].ack('groupTyping', { groupId: group.id }), 403);
      // The other group still flows.
      const m = await rest(0, A, alice).post(keep.id, 'still here');
      await assertDeliveredOnce(sockets, m.id);
      sockets.forEach((s, i) => assert.equal(s.about(group.id).length, counts[i], `${s.label}: nothing after groupDeleted`));
      assertSpiesSilent();
    });

    test('malformed events get clear errors (ack or exception) and disconnect nobody', async () => {
      const c = fresh();
      const group = await rest(0, A, alice).createGroup({ members: [bob] });
      const bad = await c.connect(1, A, alice);
      const bystander = await c.connect(1, A, bob);
      const bystander2 = await c.connect(0, A, bob);
      const g = group.id;
      const withAck = [
        ['sendGroupMessage', [], 400, /object/],
        ['sendGroupMessage', ['just a string'], 400, /object/],
        ['sendGroupMessage', [[g, 'x']], 400, /object/],
        ['sendGroupMessage', [null], 400, /object/],
        ['sendGroupMessage', [{ content: 'no group' }], 400, /groupId is required/],
        ['sendGroupMessage', [{ groupId: 42, content: 'x' }], 400, /groupId must be a string/],
        ['sendGroupMessage', [{ groupId: 'not-a-uuid', content: 'x' }], 400, /not a valid/],
        ['sendGroupMessage', [{ groupId: g }], 400, /content/],
        ['sendGroupMessage', [{ groupId: g, content: 7 }], 400, /invalid message/],
        ['sendGroupMessage', [{ groupId: g, content: '   ' }], 400, /empty/],
        ['sendGroupMessage', [{ groupId: g, content: 'x', contentType: 'video' }], 400, /contentType/],
        ['sendGroupMessage', [{ groupId: g, content: 'x', attachments: 'nope' }], 400, /invalid message/],
        ['sendGroupMessage', [{ groupId: g, content: 'x', surprise: true }], 400, /surprise|unknown field/],
        ['sendGroupMessage', [Buffer.from('binary payload')], 400, /object/],
        ['sendGroupMessage', [{ groupId: g, content: Buffer.from('binary content') }], 400, /object|invalid message/],
        ['joinGroup', [{}], 400, /groupId is required/],
        ['joinGroup', ['x'], 400, /object/],
        ['leaveGroup', [{ groupId: 12 }], 400, /groupId must be a string/],
        ['groupTyping', [{ groupId: g, typing: 'yes' }], 400, /typing must be a boolean/],
        ['groupTyping', [{ groupId: 'nope' }], 400, /not a valid/],
        ['noSuchEvent', [{ groupId: g }], 400, /unknown event 'noSuchEvent'/],
      ];
      for (const [event, args, status, re] of withAck) {
        const ack = await bad.ack(event, ...args);
        assertAckError(ack, status, re);
      }
      // Without an ack callback: an `exception` event naming the event.
      const withoutAck = [
        ['sendGroupMessage', [{ groupId: 'nope', content: 'x' }], 400],
        ['sendGroupMessage', ['string payload'], 400],
        ['joinGroup', [{ groupId: 5 }], 400],
        ['groupTyping', [{ groupId: g, typing: 1 }], 400],
        ['unknownThing', [{ a: 1 }], 400],
        ['unknownThing', [], 400],
      ];
      for (const [event, args, status] of withoutAck) {
        const since = bad.events.length;
        bad.emit(event, ...args);
        const ex = await bad.waitFor('exception', () => true, { since });
        assert.equal(ex.status, 'error', JSON.stringify(ex));
        assert.equal(ex.statusCode, status, JSON.stringify(ex));
        assert.equal(ex.event, event, JSON.stringify(ex));
        assert.ok(typeof ex.message === 'string' && ex.message.length > 0, JSON.stringify(ex));
      }
      // 200 KB of content: 400 (over MAX_CONTENT_CHARS), the socket stays.
      const huge = 'x'.repeat(200 * 1024);
      assertAckError(await bad.ack('sendGroupMessage', { groupId: g, content: huge }), 400, /content is longer/);
      const hugeAttachments = Array.from({ length: 50 }, (_, i) => ({ url: `https://example.com/${i}` }));
      assertAckError(await bad.ack('sendGroupMessage', { groupId: g, content: 'x', attachments: hugeAttachments }), 400, /attachments/);
      await sleep(SETTLE_MS);
      for (const s of [bad, bystander, bystander2]) {
        assert.equal(s.socket.connected, true, `${s.label} is still connected`);
        assert.deepEqual(s.disconnects, [], `${s.label} disconnects`);
      }
      assert.equal(bystander.received('exception').length, 0);
      // Nothing was stored or emitted by any of it, and the socket still works.
      assert.equal(bystander.received('newGroupMessage').length, 0);
      const ok = await bad.ack('sendGroupMessage', { groupId: g, content: 'still fine' });
      assert.equal(ok.ok, true, JSON.stringify(ok));
      assert.equal(ok.data.seq, 1, 'no malformed send was stored');
      await assertDeliveredOnce([bad, bystander, bystander2], ok.data.id);
      assertSpiesSilent();
    });

    test('a message over SOCKET_MAX_PAYLOAD_BYTES drops only its own connection', async () => {
      const c = fresh();
      const group = await rest(0, A, alice).createGroup({ members: [bob] });
      const bad = await c.connect(1, A, alice);
      const bystander = await c.connect(1, A, bob);
      const bystander2 = await c.connect(0, A, bob);
      const gone = new Promise((resolve) => bad.socket.once('disconnect', resolve));
      bad.emit('sendGroupMessage', { groupId: group.id, content: 'y'.repeat(1_500_000) });
      const reason = await Promise.race([gone, sleep(5000).then(() => 'still connected')]);
      assert.notEqual(reason, 'still connected', 'an oversized packet closes the connection');
      await sleep(SETTLE_MS);
      for (const s of [bystander, bystander2]) assert.equal(s.socket.connected, true, `${s.label} still connected`);
      const m = await rest(1, A, alice).post(group.id, 'after the oversized packet');
      await assertDeliveredOnce([bystander, bystander2], m.id);
      assert.equal(m.seq, 1, 'the oversized send stored nothing');
    });

    test(`over ${SENDS_PER_SECOND} sends/second per socket gets a 429 ack`, async () => {
      const c = fresh();
      const group = await rest(0, A, alice).createGroup({ members: [bob] });
      const sender = await c.connect(1, A, alice);
      const sameUserOtherSocket = await c.connect(0, A, alice);
      const watcher = await c.connect(0, A, bob);
      // A first message alone: the race of a group's very first messages is another test's.
      const first = await rest(0, A, alice).post(group.id, 'first');
      await watcher.waitMessage(first.id);
      // Twice the rate at once is the burst allowance; four times the rate is well over it.
      const burst = SENDS_PER_SECOND * 4;
      const started = Date.now();
      const acks = await Promise.all(
        Array.from({ length: burst }, (_, i) => sender.ack('sendGroupMessage', { groupId: group.id, content: `burst ${i}` })),
      );
      const elapsed = (Date.now() - started) / 1000;
      const ok = acks.filter((a) => a.ok);
      const limited = acks.filter((a) => !a.ok);
      assert.ok(limited.length > 0, `no 429 among ${burst} sends: ${JSON.stringify(acks.map((a) => a.ok))}`);
      for (const a of limited) assertAckError(a, 429, /.+/);
      const most = Math.ceil(SENDS_PER_SECOND * (2 + elapsed)) + 1; // the burst plus what refilled meanwhile
      assert.ok(ok.length >= SENDS_PER_SECOND && ok.length <= most, `${ok.length} of ${burst} sends passed in ${elapsed} s`);
      // Limited sends stored nothing: the watcher gets exactly the accepted ones.
      await watcher.waitFor('newGroupMessage', (m) => m.seq === ok.length + 1);
      await sleep(SETTLE_MS);
      assert.deepEqual(
        watcher.received('newGroupMessage').map((m) => m.seq),
        Array.from({ length: ok.length + 1 }, (_, i) => i + 1),
        'the watcher gets exactly the accepted sends, in order',
      );
      // The limit is per socket: another socket of the same user is not limited.
      const other = await sameUserOtherSocket.ack('sendGroupMessage', { groupId: group.id, content: 'other socket' });
      assert.equal(other.ok, true, JSON.stringify(other));
      // It refills: after a pause the socket may send again, and it was never disconnected.
      await sleep(1200);
      const later = await sender.ack('sendGroupMessage', { groupId: group.id, content: 'after a pause' });
      assert.equal(later.ok, true, JSON.stringify(later));
      assert.equal(sender.socket.connected, true);
      assert.deepEqual(sender.disconnects, []);
      // Without an ack the 429 is an `exception` event.
      const noAck = await c.connect(1, A, bob);
      for (let i = 0; i < burst; i++) noAck.emit('sendGroupMessage', { groupId: group.id, content: `no ack ${i}` });
      const ex = await noAck.waitFor('exception');
      assert.equal(ex.status, 'error', JSON.stringify(ex));
      assert.equal(ex.statusCode, 429, JSON.stringify(ex));
      assert.equal(ex.event, 'sendGroupMessage', JSON.stringify(ex));
      assert.ok(typeof ex.message === 'string' && ex.message.length > 0, JSON.stringify(ex));
      await sleep(SETTLE_MS);
      assert.equal(noAck.socket.connected, true);
    });

    test('HTTP long-polling works like websocket', async () => {
      const c = fresh();
      const group = await rest(0, A, alice).createGroup({ members: [bob] });
      const polling = await c.connect(1, A, bob, { transports: ['polling'] });
      assert.equal(polling.socket.io.engine.transport.name, 'polling');
      const ws = await c.connect(0, A, alice);
      const m = await rest(0, A, alice).post(group.id, 'to a polling client');
      await assertDeliveredOnce([polling, ws], m.id);
      const ack = await polling.ack('sendGroupMessage', { groupId: group.id, content: 'from a polling client' });
      assert.equal(ack.ok, true, JSON.stringify(ack));
      await assertDeliveredOnce([polling, ws], ack.data.id);
      polling.emit('groupTyping', { groupId: group.id });
      assert.deepEqual(await ws.waitFor('groupTyping'), { groupId: group.id, from: bob, typing: true });
      assertAckError(await polling.ack('sendGroupMessage', { groupId: group.id, content: 'x'.repeat(200 * 1024) }), 400);
      const refused = c.open(1, { token: cluster.token(A, bob), orgId: B }, { transports: ['polling'] });
      assert.match((await refused.refused()).message, /org does not match/);
    });

    test('no socket ever saw another org\'s events, and spies saw nothing', async () => {
      assertSpiesSilent();
      for (const s of spies) {
        assert.equal(s.socket.connected, true, `${s.label} is still connected`);
        assertNoCrossOrg(s);
      }
    });

    test('no server process crashed', { skip: mode === 'external' && 'external topology' }, () => {
      assert.deepEqual(cluster.crashed(), []);
      for (const p of cluster.procs) {
        assert.deepEqual(p.grep(/panicked/), [], `${p.name} panicked`);
      }
    });

    function assertSpiesSilent() {
      for (const s of spies) {
        assert.deepEqual(
          s.events.map((e) => `${e.event} ${JSON.stringify(e.payload)}`),
          [],
          `${s.label} must receive nothing`,
        );
      }
    }
  });
}

function nowS() {
  return Math.floor(Date.now() / 1000);
}
