// The socket.io end-to-end suite against each topology (see suite.mjs and cluster.mjs):
// scaled (2 API + 2 gateway processes on Postgres and Redis) and standalone (`serve`), or the
// external topology named by E2E_API_URLS / E2E_GATEWAY_URLS / E2E_JWT_SECRET.
//
//   COMMUNITY_CHAT_BIN=/var/tmp/cc-target/debug/community-chat node --test --test-concurrency=1 tests/e2e/

import { defineGatewaySuite, topologies } from './suite.mjs';

for (const mode of topologies()) defineGatewaySuite(mode);
