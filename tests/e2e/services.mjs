// Private Postgres and Redis servers for tests that kill, stop or restart them: each runs on a
// free loopback port, in a temp folder of its own, as a child of the test process (so a kill of
// the test's process group takes them too). The machine's shared Postgres (5432) and Redis
// (6379) are never touched.
//
//   const pg = await privatePostgres();   // pg.url: admin URL (postgres://postgres@127.0.0.1:PORT/postgres)
//   await pg.stop();  await pg.start();  await pg.restart();  await pg.psql('select 1');  await pg.destroy();
//   const redis = await privateRedis();   // redis.url, redis.port
//   await redis.stop();  // SIGKILL;  redis.stop('shutdown'): SHUTDOWN NOSAVE
//   await redis.start();  await redis.restart();  await redis.cli('PING');  await redis.destroy();
//
// stop() of Postgres is an immediate shutdown (`pg_ctl -m immediate`: like a crash, clients'
// connections break at once). Every server still running and every temp folder is removed when
// the test process exits, whatever the reason (E2E_KEEP_LOGS=1 keeps the folders).
//
// PostgreSQL binaries: PG_BIN, else the newest /usr/lib/postgresql/*/bin, else `pg_config
// --bindir`. initdb and postgres refuse to run as root: as root they run as the `postgres` OS
// user (runuser).

import { execFile, execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const PG_BIN = process.env.PG_BIN || findPgBin();
const IS_ROOT = typeof process.getuid === 'function' && process.getuid() === 0;
const PG_USER = 'postgres';

/// Children still running and folders not removed yet, cleaned up at exit.
const CHILDREN = new Set();
const PG_DATA_DIRS = new Set();
const DIRS = new Set();
let hookInstalled = false;
function installExitHook() {
  if (hookInstalled) return;
  hookInstalled = true;
  process.on('exit', () => {
    for (const dataDir of PG_DATA_DIRS) {
      const pid = postmasterPid(dataDir);
      if (pid) {
        try {
          process.kill(pid, 'SIGQUIT'); // immediate shutdown
        } catch {
          // gone
        }
      }
    }
    for (const child of CHILDREN) {
      try {
        child.kill('SIGKILL');
      } catch {
        // gone
      }
    }
    // Postgres backends exit shortly after the postmaster's SIGQUIT; give them a moment so the
    // folder can go.
    for (const dataDir of PG_DATA_DIRS) {
      const pid = postmasterPid(dataDir);
      if (pid) {
        for (let i = 0; i < 50 && alive(pid); i++) execFileSync('sleep', ['0.1']);
        if (alive(pid)) {
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            // gone
          }
        }
      }
    }
    if (process.env.E2E_KEEP_LOGS !== '1') {
      for (const dir of DIRS) fs.rmSync(dir, { recursive: true, force: true });
    }
  });
}

function findPgBin() {
  const root = '/usr/lib/postgresql';
  try {
    const versions = fs.readdirSync(root)
      .filter((v) => fs.existsSync(path.join(root, v, 'bin', 'initdb')))
      .sort((a, b) => Number(b) - Number(a));
    if (versions.length) return path.join(root, versions[0], 'bin');
  } catch {
    // not a Debian layout
  }
  try {
    return execFileSync('pg_config', ['--bindir']).toString().trim();
  } catch {
    return '/usr/lib/postgresql/15/bin';
  }
}

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function postmasterPid(dataDir) {
  try {
    const pid = Number(fs.readFileSync(path.join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
    return Number.isInteger(pid) && pid > 0 ? pid : null;
  } catch {
    return null;
  }
}

/// A TCP port free on 127.0.0.1 right now.
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

function run(cmd, args, { timeout = 60_000, env } = {}) {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout, env, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
      if (error) {
        error.message += `\n--- stdout\n${stdout}\n--- stderr\n${stderr}`;
        reject(error);
      } else {
        resolve({ stdout, stderr });
      }
    });
  });
}

/// [cmd, args] running `bin` as the postgres OS user when we are root.
function asPostgres(bin, args) {
  return IS_ROOT ? ['runuser', ['-u', PG_USER, '--', bin, ...args]] : [bin, args];
}

function makeTempDir(prefix) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  DIRS.add(dir);
  if (IS_ROOT) fs.chownSync(dir, ...pgIds());
  return dir;
}

let ids = null;
function pgIds() {
  if (!ids) {
    const uid = Number(execFileSync('id', ['-u', PG_USER]).toString().trim());
    const gid = Number(execFileSync('id', ['-g', PG_USER]).toString().trim());
    ids = [uid, gid];
  }
  return ids;
}

/// Spawns a server with its output appended to `logPath`, killed by the exit hook if still
/// running; `proc.exited` resolves to `{ code, signal }` after `onExit` ran.
function spawnTracked(cmd, args, logPath, onExit) {
  const log = fs.openSync(logPath, 'a');
  const proc = spawn(cmd, args, { stdio: ['ignore', log, log] });
  fs.closeSync(log);
  CHILDREN.add(proc);
  proc.exited = new Promise((resolve) => proc.on('exit', (code, signal) => {
    CHILDREN.delete(proc);
    onExit();
    resolve({ code, signal });
  }));
  return proc;
}

async function waitFor(fn, { timeoutMs, what, intervalMs = 100 }) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try {
      if (await fn()) return;
    } catch (e) {
      last = e;
    }
    await sleep(intervalMs);
  }
  throw new Error(`${what}: not within ${timeoutMs} ms${last ? ` (${last.message.split('\n')[0]})` : ''}`);
}

/**
 * A private PostgreSQL server (initdb in a temp folder, trust auth, fsync off), started.
 * Returns { port, url, dataDir, logPath, start(), stop(), restart(), psql(sql, db?), running(), destroy() }.
 */
export async function privatePostgres({ label = 'pg' } = {}) {
  installExitHook();
  const initdb = path.join(PG_BIN, 'initdb');
  if (!fs.existsSync(initdb)) throw new Error(`PostgreSQL binaries not found in ${PG_BIN} (set PG_BIN)`);
  const dir = makeTempDir(`cc-e2e-${label}-`);
  const dataDir = path.join(dir, 'data');
  const logPath = path.join(dir, 'postgres.log');
  const port = await freePort();
  const url = `postgres://postgres@127.0.0.1:${port}/postgres`;
  const [initCmd, initArgs] = asPostgres(initdb, ['-D', dataDir, '-A', 'trust', '-U', PG_USER, '--no-sync', '-E', 'UTF8', '--locale=C']);
  await run(initCmd, initArgs, { timeout: 120_000 });
  PG_DATA_DIRS.add(dataDir);

  let child = null;
  let exited = null;
  const start = async () => {
    if (child) throw new Error(`private Postgres on ${port} is already running`);
    const [cmd, args] = asPostgres(path.join(PG_BIN, 'postgres'), [
      '-D', dataDir, '-p', String(port), '-k', dir,
      // fsync=off survives a crash of Postgres itself (the OS keeps the data), not of the
      // machine; synchronous_commit stays on: an acknowledged commit must survive stop().
      '-c', 'listen_addresses=127.0.0.1', '-c', 'fsync=off', '-c', 'max_connections=200',
    ]);
    const proc = spawnTracked(cmd, args, logPath, () => { if (child === proc) child = null; });
    child = proc;
    exited = proc.exited;
    await waitFor(async () => {
      if (child !== proc) throw new Error(`postgres exited while starting:\n${tail(logPath)}`);
      await run(path.join(PG_BIN, 'pg_isready'), ['-q', '-h', '127.0.0.1', '-p', String(port), '-t', '1'], { timeout: 5000 });
      return true;
    }, { timeoutMs: 30_000, what: `private Postgres on ${port} accepting connections` }).catch((e) => {
      throw new Error(`${e.message}\n${tail(logPath)}`);
    });
  };

  /// Immediate shutdown: every connection breaks at once, nothing is flushed (like a crash).
  const stop = async () => {
    if (!child) return;
    const done = exited;
    const [cmd, args] = asPostgres(path.join(PG_BIN, 'pg_ctl'), ['-D', dataDir, '-m', 'immediate', '-w', '-t', '10', 'stop']);
    try {
      await run(cmd, args, { timeout: 15_000 });
    } catch (e) {
      const pid = postmasterPid(dataDir);
      process.stderr.write(`pg_ctl stop failed (${e.message.split('\n')[0]}): SIGKILL ${pid}\n`);
      if (pid) process.kill(pid, 'SIGKILL');
      child?.kill('SIGKILL');
    }
    await done;
  };

  await start();
  return {
    port,
    url,
    dataDir,
    logPath,
    start,
    stop,
    restart: async () => {
      await stop();
      await start();
    },
    running: () => child !== null,
    psql: (sql, db = 'postgres') =>
      run('psql', [`postgres://postgres@127.0.0.1:${port}/${db}`, '-v', 'ON_ERROR_STOP=1', '-qAtX', '-c', sql], { timeout: 30_000 }).then((r) => r.stdout),
    destroy: async () => {
      await stop();
      PG_DATA_DIRS.delete(dataDir);
      if (process.env.E2E_KEEP_LOGS === '1') {
        process.stderr.write(`private Postgres folder kept: ${dir}\n`);
      } else {
        fs.rmSync(dir, { recursive: true, force: true });
      }
      DIRS.delete(dir);
    },
  };
}

/**
 * A private Redis server (no persistence), started, on a free loopback port.
 * Returns { port, url, start(), stop(how?), restart(), cli(...args), ping(), running(), destroy() }.
 */
export async function privateRedis({ label = 'redis' } = {}) {
  installExitHook();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `cc-e2e-${label}-`));
  DIRS.add(dir);
  const logPath = path.join(dir, 'redis.log');
  const port = await freePort();
  const url = `redis://127.0.0.1:${port}`;
  let child = null;
  let exited = null;

  const cli = (...args) => run('redis-cli', ['-h', '127.0.0.1', '-p', String(port), ...args], { timeout: 10_000 });
  const ping = async () => {
    try {
      return (await cli('PING')).stdout.trim() === 'PONG';
    } catch {
      return false;
    }
  };

  const start = async () => {
    if (child) throw new Error(`private Redis on ${port} is already running`);
    const proc = spawnTracked('redis-server', [
      '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--daemonize', 'no', '--dir', dir,
    ], logPath, () => { if (child === proc) child = null; });
    child = proc;
    exited = proc.exited;
    await waitFor(async () => {
      if (child !== proc) throw new Error(`redis-server exited while starting:\n${tail(logPath)}`);
      return ping();
    }, { timeoutMs: 15_000, what: `private Redis on ${port} answering PING` });
  };

  /// `how`: 'kill' (SIGKILL, the default) or 'shutdown' (SHUTDOWN NOSAVE).
  const stop = async (how = 'kill') => {
    if (!child) return;
    const proc = child;
    const done = exited;
    if (how === 'shutdown') {
      try {
        await cli('SHUTDOWN', 'NOSAVE');
      } catch {
        // redis-cli may report the closed connection as an error
      }
      const gone = await Promise.race([done.then(() => true), sleep(5000).then(() => false)]);
      if (!gone) proc.kill('SIGKILL');
    } else {
      proc.kill('SIGKILL');
    }
    await done;
  };

  await start();
  return {
    port,
    url,
    logPath,
    start,
    stop,
    restart: async () => {
      await stop();
      await start();
    },
    cli,
    ping,
    running: () => child !== null,
    destroy: async () => {
      await stop();
      if (process.env.E2E_KEEP_LOGS === '1') {
        process.stderr.write(`private Redis folder kept: ${dir}\n`);
      } else {
        fs.rmSync(dir, { recursive: true, force: true });
      }
      DIRS.delete(dir);
    },
  };
}

function tail(file, n = 20) {
  try {
    return fs.readFileSync(file, 'utf8').split('\n').slice(-n).join('\n');
  } catch {
    return '';
  }
}
