// Catch-up reads shared by the member sockets of one group that sync it at the same time
// (gateway/src/shared_reads.rs): one read, from the lowest afterSeq, serves them all; each
// socket gets only the seqs above its own afterSeq, then the live messages held meanwhile.
// What a client may count on is the README's "Delivery guarantees": catch-up messages arrive
// before the live ones of that group continue, with no duplicate and no gap at the seam, and a
// sync re-sends everything after its afterSeq, also what the socket was sent before.
//
// Run for each topology (E2E_MODES, or the external one):
//
//   cd tests/e2e && COMMUNITY_CHAT_BIN=/path/to/community-chat node --test shared-sync.test.mjs

import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';

import { startCluster } from './cluster.mjs';
import { Clients, Rest, SETTLE_MS, sleep, uid } from './helpers.mjs';
import { fullHistory } from './recipe.mjs';
import { topologies } from './suite.mjs';

const MEMBERS = 12;
/// Messages stored before anyone connects.
const BEFORE = 30;
/// Messages posted while the sockets sync, in each round.
const DURING = 20;
/// Each member socket's handshake `auth.sync` afterSeq: from nothing to the latest, some equal.
const HANDSHAKE_AFTER = [0, 3, 7, 7, 12, 18, 18, 22, 25, 28, 29, BEFORE];
/// Each socket's `syncGroups` afterSeq in the second round, when it has every seq up to
/// BEFORE + DURING: the latest, nothing, and in between, some equal.
const SYNC_AFTER = [BEFORE + DURING, 0, 44, 10, 25, 25, 49, 33, 1, 47, 38, 20];
/// REST posts in bursts of this many at once, in turn.
const BURSTS = [1, 3, 2, 4, 1, 2, 3, 1, 2, 1];

/// from..to, inclusive (empty when to < from).
const range = (from, to) => Array.from({ length: Math.max(0, to - from + 1) }, (_, i) => from + i);

for (const mode of topologies()) {
  describe(`shared catch-up reads (${mode})`, { timeout: 60_000 }, () => {
    let cluster;
    let clients;

    before(async () => {
      cluster = await startCluster({ mode: mode === 'external' ? 'scaled' : mode });
    });

    after(async () => {
      clients?.closeAll();
      await cluster?.stop();
    });

    afterEach(() => {
      try {
        clients?.assertNoCrossOrg();
      } finally {
        clients?.closeAll();
      }
    });

    test('members of one group syncing at once each get exactly what they missed, then live, no duplicate', { timeout: 45_000 }, async () => {
      assert.equal(HANDSHAKE_AFTER.length, MEMBERS);
      assert.equal(SYNC_AFTER.length, MEMBERS);
      clients = new Clients(cluster);
      const run = uid();
      const org = `orgS-${run}`;
      const emails = Array.from({ length: MEMBERS }, (_, i) => `m${i}-${run}@example.com`);
      const rest = (api, email) => new Rest(cluster, api, org, email);
      const gateways = cluster.gatewayUrls.length;
      const group = await rest(0, emails[0]).createGroup({ name: 'shared sync', members: emails.slice(1) });
      assert.equal(group.memberCount, MEMBERS);
      const messagesOf = (s) => s.received('newGroupMessage', (m) => m.groupId === group.id);

      for (let i = 0; i < BEFORE; i++) await rest(i % 2, emails[i % MEMBERS]).post(group.id, `before ${i}`);

      /// Posts `n` messages over REST in bursts of 1-4 at once, on both API pods, from several
      /// members; resolves with their seqs.
      const postDuring = async (n, tag) => {
        const seqs = [];
        for (let b = 0; seqs.length < n; b++) {
          const size = Math.min(BURSTS[b % BURSTS.length], n - seqs.length);
          const start = seqs.length;
          const burst = range(start, start + size - 1).map((i) => rest(i % 2, emails[(i * 5) % MEMBERS]).post(group.id, `${tag} ${i}`));
          seqs.push(...(await Promise.all(burst)).map((m) => m.seq));
          await sleep(10);
        }
        return seqs;
      };

      // Round 1: every member connects at the same moment, each with its own handshake sync,
      // on the gateways in turn, while more messages are posted.
      const t0 = Date.now();
      const sockets = emails.map((email, i) => clients.open(
        i % gateways,
        { token: cluster.token(org, email), orgId: org, sync: [{ groupId: group.id, afterSeq: HANDSHAKE_AFTER[i] }] },
        { label: `${email.split('@')[0]}/gateway${(i % gateways) + 1} (handshake afterSeq ${HANDSHAKE_AFTER[i]})` },
      ));
      const [posted1] = await Promise.all([postDuring(DURING, 'during the handshakes'), ...sockets.map((s) => s.connected())]);
      const last1 = BEFORE + DURING;
      assert.deepEqual([...posted1].sort((a, b) => a - b), range(BEFORE + 1, last1), 'seqs of the posts during the handshakes');
      await Promise.all(sockets.map((s) => s.waitFor('groupsSynced')));
      await Promise.all(sockets.map((s) => s.waitFor('newGroupMessage', (m) => m.groupId === group.id && m.seq === last1)));
      await sleep(SETTLE_MS);
      const round1Ms = Date.now() - t0;

      let stored = await fullHistory(rest(1, emails[1]), group.id);
      assert.deepEqual(stored.map((m) => m.seq), range(1, last1), 'stored seqs');
      const idOf = (seq) => stored[seq - 1]?.id;

      sockets.forEach((s, i) => {
        const after1 = HANDSHAKE_AFTER[i];
        const got = messagesOf(s);
        assert.deepEqual(got.map((m) => m.seq), range(after1 + 1, last1),
          `${s.label}: after the handshake sync, seqs ${got.map((m) => m.seq).join(',')}`);
        assert.deepEqual(got.map((m) => m.id), got.map((m) => idOf(m.seq)), `${s.label}: ids are the stored ones`);
        const synced = s.received('groupsSynced');
        assert.equal(synced.length, 1, `${s.label}: one groupsSynced, got ${JSON.stringify(synced)}`);
        const summary = synced[0]?.groups?.find((g) => g.groupId === group.id);
        assert.ok(summary && summary.error === undefined, `${s.label}: groupsSynced ${JSON.stringify(synced[0])}`);
        // groupsSynced ends the sync: what was stored before the socket connected came first.
        const syncedAt = s.events.findIndex((e) => e.event === 'groupsSynced');
        const storedBefore = s.events.slice(0, syncedAt).filter((e) => e.event === 'newGroupMessage' && e.payload.seq <= BEFORE);
        assert.equal(storedBefore.length, BEFORE - after1, `${s.label}: messages stored before it connected, received before groupsSynced`);
      });

      // Round 2: the same sockets, each having every seq up to last1, call syncGroups at the same
      // moment from different afterSeqs while more messages are posted.
      const t1 = Date.now();
      const marks = sockets.map((s) => s.events.length);
      const posting2 = postDuring(DURING, 'during the syncGroups');
      await sleep(15); // some live messages may reach the sockets before their sync
      const [posted2, ...acks] = await Promise.all([
        posting2,
        ...sockets.map((s, i) => s.ack('syncGroups', { groups: [{ groupId: group.id, afterSeq: SYNC_AFTER[i] }] })),
      ]);
      const last2 = last1 + DURING;
      assert.deepEqual([...posted2].sort((a, b) => a - b), range(last1 + 1, last2), 'seqs of the posts during the syncGroups');
      sockets.forEach((s, i) => {
        const summary = acks[i]?.data?.groups?.find((g) => g.groupId === group.id);
        assert.ok(acks[i]?.ok === true && summary && summary.error === undefined, `${s.label}: syncGroups ack ${JSON.stringify(acks[i])}`);
      });
      await Promise.all(sockets.map((s, i) => s.waitFor('newGroupMessage', (m) => m.groupId === group.id && m.seq === last2, { since: marks[i] })));
      await sleep(SETTLE_MS);
      const round2Ms = Date.now() - t1;

      stored = await fullHistory(rest(0, emails[2]), group.id);
      assert.deepEqual(stored.map((m) => m.seq), range(1, last2), 'stored seqs');

      const prefixes = [];
      sockets.forEach((s, i) => {
        const after2 = SYNC_AFTER[i];
        const since = s.events.slice(marks[i]).filter((e) => e.event === 'newGroupMessage' && e.payload.groupId === group.id).map((e) => e.payload);
        const seqs = since.map((m) => m.seq);
        // What came after the syncGroups was emitted: first, maybe, live messages sent before
        // the sync took effect (last1+1, last1+2, ..., in order); then the re-send of everything
        // after afterSeq, then the live ones, each seq once and in order up to the last.
        const wanted = range(after2 + 1, last2);
        const k = range(0, seqs.length).find((n) =>
          seqs.slice(0, n).every((seq, j) => seq === last1 + 1 + j) && seqs.slice(n).join() === wanted.join());
        assert.notEqual(k, undefined,
          `${s.label}: after syncGroups from ${after2} (it had up to ${last1}), seqs ${seqs.join(',')}: expected ` +
          `[${last1 + 1}..${last1}+k] then ${after2 + 1}..${last2}, each once and in order`);
        prefixes.push(k);
        assert.deepEqual(since.map((m) => m.id), since.map((m) => idOf(m.seq)), `${s.label}: ids are the stored ones`);
        // The README's client (ignore a seq at or below the last one it has, sync on a jump)
        // ends with every seq once, and never sees a jump.
        let last = HANDSHAKE_AFTER[i];
        const kept = [];
        for (const m of messagesOf(s)) {
          if (m.seq <= last) continue;
          assert.equal(m.seq, last + 1, `${s.label}: a jump from ${last} to ${m.seq}`);
          last = m.seq;
          kept.push(m.seq);
        }
        assert.deepEqual(kept, range(HANDSHAKE_AFTER[i] + 1, last2), `${s.label}: the README's client has every seq once`);
        assert.deepEqual(s.received('exception'), [], `${s.label}: exceptions`);
        assert.deepEqual(s.disconnects, [], `${s.label}: disconnects`);
        assert.equal(s.socket.connected, true, `${s.label}: still connected`);
      });
      // For the log: the last seq each catch-up read from the store (the rest came live).
      const readTo1 = sockets.map((s) => s.received('groupsSynced')[0].groups.find((g) => g.groupId === group.id).lastSeq);
      const readTo2 = acks.map((a) => a.data.groups.find((g) => g.groupId === group.id).lastSeq);
      console.log(`shared sync test (${mode}): ${MEMBERS} sockets on ${gateways} gateway(s); `
        + `handshake round to seq ${last1} in ${round1Ms} ms, catch-ups read up to ${readTo1.join(',')}; `
        + `syncGroups round to seq ${last2} in ${round2Ms} ms, catch-ups read up to ${readTo2.join(',')}, `
        + `live messages before each sync took effect: ${prefixes.join(',')}`);
    });
  });
}
