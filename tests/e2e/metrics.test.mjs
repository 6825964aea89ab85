// /metrics of every process parses as Prometheus text, has the families operators alert on, and
// moves when traffic flows: HTTP requests by route and status, sockets, rooms, subscriptions,
// events in/out, fan-out latency, queue depths, slow clients, the database pool.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { requestedModes, startCluster } from './cluster.mjs';
import { Clients, Rest, assertDeliveredOnce, eventually, uid } from './helpers.mjs';
import { parsePrometheus, sampleSum, scrape } from './prometheus.mjs';

const POST_ROUTE = '/client/community/groups/{groupId}/messages';

/// Families every process exports, and those of processes that hold sockets.
const EVERY_PROCESS = [
  'http_requests_total', 'http_request_duration_seconds', 'db_pool_connections', 'db_pool_max_connections',
  'db_post_batches_total', 'db_post_batch_posts_total', 'db_post_batch_retries_total',
];
const GATEWAY = [
  'gateway_sockets_connected', 'gateway_group_rooms', 'gateway_bus_subscriptions', 'gateway_events_in_total',
  'gateway_events_out_total', 'gateway_fanout_messages_total', 'gateway_fanout_latency_seconds',
  'gateway_bus_queue_depth', 'gateway_subscription_queue_depth', 'gateway_held_messages', 'gateway_admission_queue_depth',
  'gateway_slow_clients_disconnected_total', 'gateway_events_lagged_total', 'gateway_gap_fills_total',
];

describe('the strict Prometheus reader', () => {
  test('accepts a well-formed body and rejects broken ones', () => {
    const good = '# HELP a_total A.\n# TYPE a_total counter\na_total{x="1"} 3\n# TYPE h histogram\nh_bucket{le="0.1"} 1\nh_bucket{le="+Inf"} 2\nh_sum 0.3\nh_count 2\n';
    assert.equal(sampleSum(parsePrometheus(good), 'a_total'), 3);
    const broken = {
      'no TYPE': 'a 1\n',
      'bad value': '# TYPE a gauge\na one\n',
      'bad label': '# TYPE a gauge\na{x=1} 1\n',
      'no newline at the end': '# TYPE a gauge\na 1',
      'TYPE twice': '# TYPE a gauge\n# TYPE a gauge\na 1\n',
      'negative counter': '# TYPE a counter\na -1\n',
      'histogram not cumulative': '# TYPE h histogram\nh_bucket{le="0.1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n',
      'histogram without +Inf': '# TYPE h histogram\nh_bucket{le="0.1"} 1\nh_sum 1\nh_count 1\n',
      '+Inf bucket and count differ': '# TYPE h histogram\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 2\n',
    };
    for (const [what, body] of Object.entries(broken)) assert.throws(() => parsePrometheus(body), Error, what);
  });
});

for (const mode of requestedModes()) {
  describe(`/metrics (${mode})`, { timeout: 60_000 }, () => {
    let cluster;
    let clients;
    before(async () => {
      cluster = await startCluster({ mode });
      clients = new Clients(cluster);
    });
    after(async () => {
      clients?.closeAll();
      await cluster?.stop();
    });

    test('parses, has every family, and moves with traffic', async () => {
      const apis = cluster.apiUrls;
      const gateways = [...new Set(cluster.gatewayUrls)];
      const everyProcess = [...new Set([...apis, ...gateways])];
      const before = new Map();
      for (const url of everyProcess) {
        const families = await scrape(url);
        for (const name of EVERY_PROCESS) assert.ok(families.has(name), `${url}: ${name} missing`);
        if (gateways.includes(url)) for (const name of GATEWAY) assert.ok(families.has(name), `${url}: ${name} missing`);
        before.set(url, families);
      }

      const org = `orgM-${uid()}`;
      const alice = `alice-${uid()}@example.com`;
      const bob = `bob-${uid()}@example.com`;
      const rest = new Rest(cluster, 0, org, alice);
      const group = await rest.createGroup({ members: [bob] });
      const sockets = [];
      for (let gw = 0; gw < gateways.length; gw++) sockets.push(await clients.connect(gw, org, gw % 2 ? bob : alice));
      const posts = 5;
      for (let i = 0; i < posts; i++) {
        const m = await rest.post(group.id, `metrics ${i}`);
        await assertDeliveredOnce(sockets, m.id);
      }

      const api = apis[0];
      await eventually(async () => {
        const now = await scrape(api);
        const then = before.get(api);
        const label = { route: POST_ROUTE, status: '201', method: 'POST' };
        return sampleSum(now, 'http_requests_total', label) - sampleSum(then, 'http_requests_total', label) === posts
          && sampleSum(now, 'http_request_duration_seconds_count', label) - sampleSum(then, 'http_request_duration_seconds_count', label) === posts;
      }, { what: `${api}: POST messages 201 counted ${posts} more times` });
      const apiNow = await scrape(api);
      assert.ok(sampleSum(apiNow, 'db_pool_max_connections') >= 1, 'db_pool_max_connections');
      assert.ok(sampleSum(apiNow, 'db_pool_connections') >= 1, 'the pool holds a connection after traffic');
      // Group commit runs on Postgres only (scaled); standalone SQLite posts one by one.
      const apiThen = before.get(api);
      const posted = sampleSum(apiNow, 'db_post_batch_posts_total') - sampleSum(apiThen, 'db_post_batch_posts_total');
      const commits = sampleSum(apiNow, 'db_post_batches_total') - sampleSum(apiThen, 'db_post_batches_total');
      if (mode === 'scaled') {
        assert.equal(posted, posts, `${api}: every post went through group commit`);
        assert.ok(commits >= 1 && commits <= posts, `${api}: ${commits} commits for ${posts} posts`);
      } else {
        assert.equal(posted + commits, 0, 'no group commit on SQLite');
      }

      for (const url of gateways) {
        const now = await scrape(url);
        const then = before.get(url);
        const delta = (name) => sampleSum(now, name) - sampleSum(then, name);
        assert.ok(sampleSum(now, 'gateway_sockets_connected') >= 1, `${url}: sockets connected`);
        assert.ok(sampleSum(now, 'gateway_group_rooms') >= 1, `${url}: group rooms`);
        assert.ok(sampleSum(now, 'gateway_bus_subscriptions') >= 2, `${url}: bus subscriptions (group + user)`);
        assert.ok(delta('gateway_events_in_total') >= posts, `${url}: events in moved by ${delta('gateway_events_in_total')}`);
        assert.ok(delta('gateway_events_out_total') >= posts, `${url}: events out moved by ${delta('gateway_events_out_total')}`);
        assert.ok(delta('gateway_fanout_messages_total') >= posts, `${url}: fanned-out messages`);
        assert.ok(delta('gateway_fanout_latency_seconds_count') >= posts, `${url}: fan-out latency observed`);
        assert.ok(delta('gateway_fanout_latency_seconds_sum') > 0, `${url}: fan-out latency sum moved`);
      }
    });
  });
}
