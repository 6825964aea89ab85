// Launches community-chat for the end-to-end tests, on loopback only.
//
//   const cluster = await startCluster({ mode: 'scaled' | 'standalone', env: { ... } });
//   cluster.apiUrls, cluster.gatewayUrls, cluster.token(org, email), cluster.redisPrefix,
//   await cluster.stop()
//
// scaled: a fresh Postgres database, `migrate`, then 2 `api` + 2 `gateway` processes sharing
// a JWT secret and one Redis (a channel prefix of their own, so test runs can share Redis).
// standalone: one `serve` process (SQLite in a temp DATA_DIR, in-process bus) that is both the
// API and the gateway.
// external: when E2E_API_URLS, E2E_GATEWAY_URLS and E2E_JWT_SECRET are set, nothing is started
// and those URLs are used (optional E2E_REDIS_PREFIX); tests that need to kill processes or read
// Redis internals skip themselves (`cluster.external`).
//
// Binary: COMMUNITY_CHAT_BIN (else $CARGO_TARGET_DIR/debug/community-chat, else target/debug).
// Postgres admin URL: the `postgresUrl` option, else TEST_DATABASE_URL (default
// postgres://postgres@127.0.0.1:5432/test). Redis: the `redisUrl` (or `redisPort`) option, else
// redis://127.0.0.1:6379. Tests that break Postgres or Redis pass private ones (services.mjs).
// Fault injection: cluster.kill(name) (SIGKILL) and cluster.restart(name) (same port), with
// name one of api1, api2, gateway1, gateway2; cluster.terminate(name) sends SIGTERM (graceful
// shutdown) and returns the process (its `exited` promise resolves with { code, signal }).
// Logs: each process's stdout+stderr go to a file under a temp folder, removed by stop() unless
// E2E_KEEP_LOGS=1; ERROR / WARN / panic lines are echoed to stderr as they happen
// (E2E_ECHO_LOGS=all echoes every line, =none nothing).

import { spawn, execFile, execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '..', '..');

export const REDIS_HOST = '127.0.0.1';
export const REDIS_PORT = 6379;

/// Environment variables the binary reads (shared/src/config.rs): never inherited from the
/// caller's environment, so a developer's own settings cannot leak into a test process.
const CONFIG_VARS = [
  'DATABASE_URL', 'DATABASE_MAX_CONNECTIONS', 'REDIS_URL', 'REDIS_SHARDED_PUBSUB', 'REDIS_CHANNEL_PREFIX',
  'LISTEN_ADDR', 'DATA_DIR', 'JWT_SECRET', 'JWT_PUBLIC_KEY_FILE', 'JWT_ALGORITHM', 'JWT_ISSUER',
  'JWT_AUDIENCE', 'JWT_EMAIL_CLAIM', 'JWT_ORG_CLAIM', 'CORS_ORIGINS', 'RUST_LOG', 'LOG_FORMAT',
  'OTEL_EXPORTER_OTLP_ENDPOINT', 'SOCKET_MAX_QUEUED_PACKETS', 'SOCKET_SENDS_PER_SECOND',
  'SOCKET_MAX_PAYLOAD_BYTES', 'SOCKET_READ_BUFFER_BYTES', 'TYPING_THROTTLE_MS', 'SOCKET_PING_INTERVAL_MS',
  'SOCKET_PING_TIMEOUT_MS', 'GAP_FILL_DELAY_MS', 'MAX_CONTENT_CHARS', 'MAX_ATTACHMENTS', 'MAX_NAME_CHARS',
  'MAX_DESCRIPTION_CHARS', 'MAX_BODY_BYTES', 'MAX_INITIAL_MEMBERS', 'CONTENT_TYPES', 'SHUTDOWN_DRAIN_SECONDS',
];

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const b64url = (data) => Buffer.from(data).toString('base64url');

/// An HS256 JWT, minted by hand. `claims` replaces the default claims entirely when given.
export function mintJwt(secret, { org, email, ttlSeconds = 3600, iat, exp, claims } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const body = claims ?? {
    email,
    sub: email,
    orgId: org,
    iat: iat ?? now,
    exp: exp ?? now + ttlSeconds,
  };
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const payload = b64url(JSON.stringify(body));
  const signature = crypto.createHmac('sha256', secret).update(`${header}.${payload}`).digest('base64url');
  return `${header}.${payload}.${signature}`;
}

export function binaryPath() {
  if (process.env.COMMUNITY_CHAT_BIN) return process.env.COMMUNITY_CHAT_BIN;
  const target = process.env.CARGO_TARGET_DIR ?? path.join(REPO, 'target');
  return path.join(target, 'debug', 'community-chat');
}

/// The topologies `E2E_MODES` asks for (default: both). A value that names none of them is an
/// error: a file that defines no test would be reported as passed.
export function requestedModes() {
  const modes = (process.env.E2E_MODES || 'scaled,standalone').split(',').map((m) => m.trim()).filter(Boolean);
  const unknown = modes.filter((m) => m !== 'scaled' && m !== 'standalone');
  if (modes.length === 0 || unknown.length > 0) {
    throw new Error(`E2E_MODES=${process.env.E2E_MODES}: expected scaled, standalone or both (comma-separated)`);
  }
  return modes;
}

/// Why a test that starts and breaks its own scaled topology is skipped (`what` it would need
/// from an external one), or false when it runs.
export function scaledOnlySkip(what) {
  if (externalTopology()) return `external topology: no access to ${what}`;
  return requestedModes().includes('scaled') ? false : 'E2E_MODES does not include scaled';
}

/// `describe` for a suite that starts and breaks its own scaled topology (`what`, as for
/// scaledOnlySkip). When it cannot run, one skipped test stands in for it: node's summary counts
/// skipped tests, not skipped suites, and a run that left the suite out must say so.
export function describeScaledOnly(name, what, options, fn) {
  const skip = scaledOnlySkip(what);
  if (skip) test(name, { skip }, () => {});
  else describe(name, options, fn);
}

export function externalTopology() {
  const { E2E_API_URLS, E2E_GATEWAY_URLS, E2E_JWT_SECRET } = process.env;
  if (!E2E_API_URLS || !E2E_GATEWAY_URLS || !E2E_JWT_SECRET) return null;
  const list = (s) => s.split(',').map((u) => u.trim().replace(/\/+$/, '')).filter(Boolean);
  return {
    apiUrls: list(E2E_API_URLS),
    gatewayUrls: list(E2E_GATEWAY_URLS),
    secret: E2E_JWT_SECRET,
    redisPrefix: process.env.E2E_REDIS_PREFIX || null,
  };
}

function run(cmd, args, { env, timeout = 60_000 } = {}) {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { env, timeout, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
      if (error) {
        error.message += `\n--- stdout\n${stdout}\n--- stderr\n${stderr}`;
        reject(error);
      } else {
        resolve({ stdout, stderr });
      }
    });
  });
}

export function redisCli(...args) {
  return run('redis-cli', ['-h', REDIS_HOST, '-p', String(REDIS_PORT), ...args], { timeout: 10_000 });
}

function defaultPostgresAdminUrl() {
  return process.env.TEST_DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/test';
}

function databaseUrl(adminUrl, name) {
  const admin = new URL(adminUrl);
  admin.pathname = `/${name}`;
  return admin.toString();
}

async function psql(adminUrl, sql) {
  return run('psql', [adminUrl, '-v', 'ON_ERROR_STOP=1', '-q', '-c', sql], { timeout: 30_000 });
}

/// Processes still alive, killed if the test process exits without stop().
const LIVE = new Set();
/// Databases not dropped yet (name -> admin URL), dropped if the test process exits without stop().
const DATABASES = new Map();
/// Temp folders not removed yet, removed if the test process exits without stop().
const WORKDIRS = new Set();
let exitHookInstalled = false;
let exiting = false;
function installExitHook() {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // Stopped from outside (e.g. the Rust wrapper's timeout): the 'exit' hooks below and in the
  // test files still run (servers killed, Redis started again).
  for (const signal of ['SIGTERM', 'SIGINT']) {
    // `on`, not `once`: a second signal (the runner forwards it too) must not kill the process
    // before the exit hooks ran.
    process.on(signal, () => {
      if (exiting) return;
      exiting = true;
      process.stderr.write(`e2e: ${signal} received, stopping the servers\n`);
      process.exit(signal === 'SIGINT' ? 130 : 143);
    });
  }
  process.on('exit', () => {
    for (const child of LIVE) {
      try {
        child.kill('SIGKILL');
      } catch {
        // already gone
      }
    }
    for (const [name, adminUrl] of DATABASES) {
      try {
        execFileSync('psql', [adminUrl, '-q', '-c', `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`], {
          timeout: 10_000,
          stdio: 'ignore',
        });
      } catch {
        // best effort
      }
    }
    if (process.env.E2E_KEEP_LOGS !== '1') {
      for (const dir of WORKDIRS) fs.rmSync(dir, { recursive: true, force: true });
    }
  });
}

function baseEnv(extra) {
  const env = { ...process.env };
  for (const name of CONFIG_VARS) delete env[name];
  return { ...env, RUST_LOG: process.env.E2E_RUST_LOG || 'info', LOG_FORMAT: 'text', NO_COLOR: '1', ...extra };
}

/// One server process: its URL once it printed `listening on http://ADDR`, its log, its exit.
class ServerProcess {
  constructor(name, bin, args, env, logDir) {
    this.name = name;
    this.spec = { bin, args, env, logDir };
    this.logPath = path.join(logDir, `${name}.log`);
    // Appends: a restarted process (cluster.restart) logs after its predecessor.
    this.log = fs.createWriteStream(this.logPath, { flags: 'a' });
    this.lines = [];
    this.exit = null; // { code, signal } once exited
    this.stopping = false;
    this.child = spawn(bin, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    LIVE.add(this.child);
    this.exited = new Promise((resolve) => {
      this.child.on('exit', (code, signal) => {
        LIVE.delete(this.child);
        this.exit = { code, signal };
        if (!this.stopping) {
          process.stderr.write(`[${this.name}] exited unexpectedly: code ${code} signal ${signal}\n`);
        }
        resolve(this.exit);
      });
      this.child.on('error', (e) => {
        LIVE.delete(this.child);
        this.exit = { code: null, signal: null, error: e };
        resolve(this.exit);
      });
    });
    this.url = new Promise((resolve, reject) => {
      this.onListening = resolve;
      this.exited.then((e) => reject(new Error(`${name} exited before listening: ${JSON.stringify(e)}\n${this.tail()}`)));
    });
    this.url.catch(() => {});
    const echo = process.env.E2E_ECHO_LOGS ?? 'problems';
    const onLine = (raw) => {
      // eslint-disable-next-line no-control-regex
      const line = raw.replace(/\x1b\[[0-9;]*m/g, '');
      this.lines.push(line);
      if (this.lines.length > 2000) this.lines.splice(0, 1000);
      if (!this.log.writableEnded) this.log.write(`${line}\n`);
      const m = /listening on (http:\/\/\S+)/.exec(line);
      if (m) this.onListening(m[1]);
      if (echo === 'all' || (echo === 'problems' && /\b(ERROR|WARN)\b|panicked|slow client/.test(line))) {
        process.stderr.write(`[${this.name}] ${line}\n`);
      }
    };
    for (const stream of [this.child.stdout, this.child.stderr]) {
      let buffer = '';
      stream.setEncoding('utf8');
      stream.on('data', (chunk) => {
        buffer += chunk;
        let i;
        while ((i = buffer.indexOf('\n')) >= 0) {
          onLine(buffer.slice(0, i));
          buffer = buffer.slice(i + 1);
        }
      });
    }
  }

  tail(n = 40) {
    return this.lines.slice(-n).map((l) => `[${this.name}] ${l}`).join('\n');
  }

  /// Log lines that match `re` (for bug reports).
  grep(re) {
    return this.lines.filter((l) => re.test(l));
  }

  /// SIGKILL (fault injection): resolves once the process is gone.
  async kill() {
    if (this.exit) return this.exit;
    this.stopping = true;
    this.child.kill('SIGKILL');
    await this.exited;
    this.log.end();
    return this.exit;
  }

  /// SIGTERM without waiting (graceful-shutdown tests): an exit after this is expected.
  terminate() {
    this.stopping = true;
    this.child.kill('SIGTERM');
    return this;
  }

  async stop(graceMs = 5000) {
    if (this.exit) return this.exit;
    this.stopping = true;
    this.child.kill('SIGTERM');
    const done = await Promise.race([this.exited, sleep(graceMs).then(() => null)]);
    if (!done) {
      process.stderr.write(`[${this.name}] did not stop within ${graceMs} ms of SIGTERM: SIGKILL\n`);
      this.child.kill('SIGKILL');
      await this.exited;
    }
    this.log.end();
    return this.exit;
  }
}

async function waitReady(url, proc, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < deadline) {
    if (proc?.exit) throw new Error(`${proc.name} exited while starting\n${proc.tail()}`);
    try {
      const res = await fetch(`${url}/readyz`, { signal: AbortSignal.timeout(3000) });
      last = `${res.status} ${await res.text()}`;
      if (res.status === 200) return;
    } catch (e) {
      last = String(e);
    }
    await sleep(100);
  }
  throw new Error(`${url}/readyz not 200 within ${timeoutMs} ms (last: ${last})${proc ? `\n${proc.tail()}` : ''}`);
}

async function withTimeout(promise, ms, what) {
  let timer;
  try {
    return await Promise.race([
      promise,
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: timed out after ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Starts a topology. Returns { mode, apiUrls, gatewayUrls, token(org, email, opts?), secret,
 * redisPrefix, stop(), procs, external, crashed() }.
 */
export async function startCluster({ mode = 'scaled', env = {}, postgresUrl, redisUrl, redisPort } = {}) {
  const external = externalTopology();
  if (external) {
    return {
      mode: 'external',
      external: true,
      apiUrls: external.apiUrls,
      gatewayUrls: external.gatewayUrls,
      secret: external.secret,
      token: (org, email, opts = {}) => mintJwt(external.secret, { org, email, ...opts }),
      redisPrefix: external.redisPrefix,
      procs: [],
      crashed: () => [],
      stop: async () => {},
    };
  }
  if (mode !== 'scaled' && mode !== 'standalone') throw new Error(`unknown mode ${mode}`);
  installExitHook();
  const bin = binaryPath();
  if (!fs.existsSync(bin)) {
    throw new Error(`community-chat binary not found at ${bin}: build it (cargo build) or set COMMUNITY_CHAT_BIN`);
  }
  const id = crypto.randomBytes(5).toString('hex');
  const secret = `e2e-secret-${crypto.randomBytes(16).toString('hex')}`;
  const workDir = fs.mkdtempSync(path.join(os.tmpdir(), `cc-e2e-${mode}-${id}-`));
  WORKDIRS.add(workDir);
  const procs = [];
  const common = { JWT_SECRET: secret, LISTEN_ADDR: '127.0.0.1:0', ...env };
  const adminUrl = postgresUrl || defaultPostgresAdminUrl();
  const busUrl = redisUrl || `redis://${REDIS_HOST}:${redisPort ?? REDIS_PORT}`;
  let database = null;
  let redisPrefix = null;
  let stopped = false;

  const stop = async () => {
    if (stopped) return;
    stopped = true;
    await Promise.all(procs.map((p) => p.stop()));
    if (database) {
      try {
        await psql(adminUrl, `DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
        DATABASES.delete(database);
      } catch (e) {
        process.stderr.write(`dropping ${database} failed: ${e.message}\n`);
      }
    }
    if (process.env.E2E_KEEP_LOGS === '1') {
      process.stderr.write(`e2e logs kept in ${workDir}\n`);
    } else {
      fs.rmSync(workDir, { recursive: true, force: true });
    }
    WORKDIRS.delete(workDir);
  };

  try {
    let apiUrls;
    let gatewayUrls;
    if (mode === 'scaled') {
      database = `cc_e2e_${id}`;
      redisPrefix = `cc-e2e-${id}`;
      DATABASES.set(database, adminUrl);
      await psql(adminUrl, `CREATE DATABASE ${database}`);
      const scaledEnv = baseEnv({
        ...common,
        DATABASE_URL: databaseUrl(adminUrl, database),
        REDIS_URL: busUrl,
        REDIS_CHANNEL_PREFIX: redisPrefix,
        DATABASE_MAX_CONNECTIONS: '8',
      });
      await run(bin, ['migrate'], { env: scaledEnv, timeout: 120_000 });
      for (const [name, sub] of [['api1', 'api'], ['api2', 'api'], ['gateway1', 'gateway'], ['gateway2', 'gateway']]) {
        procs.push(new ServerProcess(name, bin, [sub], scaledEnv, workDir));
      }
    } else {
      const dataDir = path.join(workDir, 'data');
      fs.mkdirSync(dataDir);
      procs.push(new ServerProcess('serve', bin, ['serve'], baseEnv({ ...common, DATA_DIR: dataDir }), workDir));
    }
    const urls = await withTimeout(Promise.all(procs.map((p) => p.url)), 60_000, 'waiting for "listening on"');
    await Promise.all(urls.map((u, i) => waitReady(u, procs[i])));
    procs.forEach((p, i) => {
      p.baseUrl = urls[i];
    });
    if (mode === 'scaled') {
      apiUrls = urls.slice(0, 2);
      gatewayUrls = urls.slice(2, 4);
    } else {
      apiUrls = [urls[0]];
      gatewayUrls = [urls[0]];
    }
    const proc = (name) => {
      const p = procs.find((q) => q.name === name);
      if (!p) throw new Error(`no process named ${name} (${procs.map((q) => q.name).join(', ')})`);
      return p;
    };
    /// Processes killed on purpose, kept for their log lines and exit status.
    const killed = [];
    return {
      mode,
      external: false,
      apiUrls,
      gatewayUrls,
      secret,
      token: (org, email, opts = {}) => mintJwt(secret, { org, email, ...opts }),
      redisPrefix,
      database,
      databaseUrl: mode === 'scaled' ? databaseUrl(adminUrl, database) : null,
      postgresAdminUrl: mode === 'scaled' ? adminUrl : null,
      redisUrl: mode === 'scaled' ? busUrl : null,
      workDir,
      procs,
      killed,
      /// Processes that exited without being asked to.
      crashed: () => procs.filter((p) => p.exit && !p.stopping).map((p) => `${p.name}: ${JSON.stringify(p.exit)}`),
      proc,
      /// kill -9 of one process (fault injection); restart(name) brings it back.
      kill: async (name) => proc(name).kill(),
      /// SIGTERM of one process (graceful shutdown); returns the process, whose `exited`
      /// promise resolves with { code, signal }. restart(name) brings it back.
      terminate: (name) => proc(name).terminate(),
      /// Starts a process again on the port it had (after kill or stop), and waits until ready.
      restart: async (name, { timeoutMs = 60_000 } = {}) => {
        const old = proc(name);
        if (!old.exit) await old.kill();
        const { hostname, port } = new URL(old.baseUrl);
        const { bin: b, args, env: e, logDir } = old.spec;
        const fresh = new ServerProcess(name, b, args, { ...e, LISTEN_ADDR: `${hostname}:${port}` }, logDir);
        procs[procs.indexOf(old)] = fresh;
        killed.push(old);
        const url = await withTimeout(fresh.url, timeoutMs, `${name} restarting: waiting for "listening on"`);
        fresh.baseUrl = url;
        if (url !== old.baseUrl) throw new Error(`${name} restarted on ${url}, not ${old.baseUrl}`);
        await waitReady(url, fresh, timeoutMs);
        return fresh;
      },
      stop,
    };
  } catch (e) {
    await stop();
    throw e;
  }
}
