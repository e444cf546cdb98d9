// Test stack: a private PostgreSQL cluster (scripts/pg.sh) with the pg_realtime extension, one
// pg-realtime-sidecar process in front of it (more on demand: startExtraSidecar), and factories
// for real @supabase/realtime-js clients, HS256 tokens and SQL sessions. Everything started here
// is torn down by stop(), by the process exit hooks below, and (as a last resort) by
// scripts/test-integration.sh, which reads the pid / data-dir records written to $IT_RUN_DIR.
import { spawn, execFile, execFileSync } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import pg from 'pg';
import { RealtimeClient } from '@supabase/realtime-js';
import { Inbox, withTimeout, delay, uniq, preview } from './util.mjs';

const execFileP = promisify(execFile);

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const SIDECAR_BIN = process.env.SIDECAR_BIN ?? path.join(REPO, 'target/release/pg-realtime-sidecar');
const PG_SH = path.join(REPO, 'scripts/pg.sh');
export const JWT_SECRET = 'it-secret-0123456789-0123456789-0123456789';

// ---------------------------------------------------------------------------------------------
// JWT (HS256, node:crypto)

export function signJwt(claims, secret = JWT_SECRET, header = { alg: 'HS256', typ: 'JWT' }) {
  const enc = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const input = `${enc(header)}.${enc(claims)}`;
  const sig = createHmac('sha256', secret).update(input).digest('base64url');
  return `${input}.${sig}`;
}

/**
 * token({role, exp, ...claims}, {secret}):
 *   role defaults to 'anon' (null omits it), exp defaults to now+1h (null omits it),
 *   expiresIn (seconds) is an alternative to exp.
 */
export function token({ role = 'anon', exp, expiresIn = 3600, ...claims } = {}, { secret = JWT_SECRET } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const body = { iss: 'pg_realtime-it', iat: now, ...claims };
  if (role !== null) body.role = role;
  if (exp !== null) body.exp = exp ?? now + expiresIn;
  return signJwt(body, secret);
}

// ---------------------------------------------------------------------------------------------
// process-level cleanup registry

const liveStacks = new Set();
let hooksInstalled = false;
function installExitHooks() {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on('exit', () => {
    for (const s of liveStacks) s.stopSync();
  });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.once(sig, () => {
      for (const s of liveStacks) s.stopSync();
      process.exit(128 + (sig === 'SIGINT' ? 2 : sig === 'SIGTERM' ? 15 : 1));
    });
  }
}

function record(kind, id, value) {
  const dir = process.env.IT_RUN_DIR;
  if (!dir) return () => {};
  const f = path.join(dir, `${kind}-${id}`);
  try {
    fs.writeFileSync(f, String(value));
  } catch {
    return () => {};
  }
  return () => fs.rmSync(f, { force: true });
}

export async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

// ---------------------------------------------------------------------------------------------

export class Stack {
  constructor({ name = 'stack', sidecarEnv = {} } = {}) {
    this.name = name;
    this.sidecarEnv = sidecarEnv;
    this.secret = JWT_SECRET;
    this.clients = new Set();
    this.sessions = new Set();
    this.raws = new Set();
    this.child = null;
    this.sidecarStarts = 0;
    this.extras = new Set();
    this.extraStarts = 0;
    this.stopped = false;
  }

  get anonKey() {
    return this.token({ role: 'anon', expiresIn: 24 * 3600 });
  }

  token(claims = {}, opts = {}) {
    return token(claims, { secret: this.secret, ...opts });
  }

  httpUrl(p = '/') {
    return `http://127.0.0.1:${this.port}${p}`;
  }

  /** ws URL for raw sockets; `params` null-valued entries are omitted. */
  wsUrl({ vsn = '2.0.0', apikey = this.anonKey, path: p = '/realtime/v1/websocket', params = {} } = {}) {
    const u = new URL(`ws://127.0.0.1:${this.port}${p}`);
    if (apikey !== null) u.searchParams.set('apikey', apikey);
    for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined) u.searchParams.set(k, v);
    if (vsn !== null) u.searchParams.set('vsn', vsn);
    return u.toString();
  }

  async start() {
    installExitHooks();
    liveStacks.add(this);
    this.dir = fs.mkdtempSync(`/tmp/pg-realtime-it-${this.name}-`);
    this.unrecordDir = record('pgdir', path.basename(this.dir), this.dir);
    this.pgPort = await freePort();
    this.port = await freePort();
    await this.startPostgres();
    await this.startSidecar();
    return this;
  }

  // ---- Postgres -------------------------------------------------------------------------------

  async startPostgres() {
    try {
      await execFileP('bash', [PG_SH, 'start', this.dir, String(this.pgPort)], { timeout: 120000 });
    } catch (e) {
      throw new Error(`pg.sh start failed: ${e.message}\n${e.stderr ?? ''}\n${this.tail('postgres.log')}`);
    }
  }

  async stopPostgres() {
    await execFileP('bash', [PG_SH, 'stop', this.dir], { timeout: 120000 });
  }

  /** Fast shutdown + start of the cluster; sidecar and WebSocket clients stay up. */
  async restartPostgres() {
    for (const s of this.sessions) s.end().catch(() => {});
    this.sessions.clear();
    await this.stopPostgres();
    await this.startPostgres();
  }

  /** Immediate shutdown (crash: unlogged tables are reset by recovery) + start. */
  async crashPostgres() {
    for (const s of this.sessions) s.end().catch(() => {});
    this.sessions.clear();
    const pgbin = process.env.PGBIN ?? '/usr/lib/postgresql/15/bin';
    await execFileP('runuser', ['-u', 'postgres', '--', `${pgbin}/pg_ctl`, '-D', path.join(this.dir, 'db'), '-m', 'immediate', '-w', 'stop'], { timeout: 120000 });
    await this.startPostgres();
  }

  pgConfig() {
    return { host: '127.0.0.1', port: this.pgPort, user: 'postgres', database: 'postgres' };
  }

  /** One-shot query on a fresh connection (survives Postgres restarts). Returns rows. */
  async sql(text, params) {
    const c = new pg.Client(this.pgConfig());
    c.on('error', () => {});
    await c.connect();
    try {
      const res = await c.query(text, params);
      return Array.isArray(res) ? res.map((r) => r.rows) : res.rows;
    } finally {
      await c.end().catch(() => {});
    }
  }

  /** A dedicated connection for multi-step / concurrent transactions. Closed by stop(). */
  async session() {
    const c = new pg.Client(this.pgConfig());
    c.on('error', () => {});
    await c.connect();
    this.sessions.add(c);
    return c;
  }

  /** realtime.broadcast(topic, event, payload[, private]) in its own transaction. */
  broadcast(topic, event, payload = {}, priv) {
    if (priv === undefined) {
      return this.sql('select realtime.broadcast($1, $2, $3::jsonb)', [topic, event, JSON.stringify(payload)]);
    }
    return this.sql('select realtime.broadcast($1, $2, $3::jsonb, $4)', [topic, event, JSON.stringify(payload), priv]);
  }

  // ---- sidecar --------------------------------------------------------------------------------

  sidecarEnvironment() {
    return {
      PATH: process.env.PATH,
      // The least-privileged role scripts/pg.sh creates (member of realtime_sidecar), never the
      // superuser: the tests prove its grants are enough.
      DATABASE_URL: `postgres://sidecar@127.0.0.1:${this.pgPort}/postgres`,
      HOST: '127.0.0.1',
      PORT: String(this.port),
      JWT_SECRET: this.secret,
      CONNECT_ERROR_BACKOFF_MS: '0',
      CHANNEL_ERROR_BACKOFF_MS: '100',
      RUST_LOG: process.env.IT_RUST_LOG ?? 'info',
      RUST_BACKTRACE: '1',
      ...(process.env.IT_POLL_FALLBACK_MS ? { POLL_FALLBACK_MS: process.env.IT_POLL_FALLBACK_MS } : {}),
      ...this.sidecarEnv,
    };
  }

  async startSidecar() {
    this.sidecarStarts += 1;
    this.child = this.spawnSidecar(this.sidecarEnvironment(), 'sidecar.log', `sidecar start #${this.sidecarStarts}`);
    await this.waitHealthy(30000);
  }

  /** Spawns the sidecar binary with `env`, appending its output to `logFile` in the stack dir. */
  spawnSidecar(env, logFile, label) {
    if (!fs.existsSync(SIDECAR_BIN)) throw new Error(`sidecar binary not found: ${SIDECAR_BIN}`);
    const logPath = path.join(this.dir, logFile);
    fs.appendFileSync(logPath, `\n===== [it] ${label} at ${new Date().toISOString()} =====\n`);
    const fd = fs.openSync(logPath, 'a');
    const child = spawn(SIDECAR_BIN, [], { env, stdio: ['ignore', fd, fd] });
    fs.closeSync(fd);
    child.logFile = logFile;
    child.exitInfo = null;
    child.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        child.exitInfo = { code, signal };
        resolve(child.exitInfo);
      });
      child.once('error', (err) => {
        child.exitInfo = { error: err.message };
        resolve(child.exitInfo);
      });
    });
    child.unrecord = record('pid', child.pid, child.pid);
    return child;
  }

  /**
   * Starts one more sidecar process against this stack's database, with the main one's
   * environment (plus `extraEnv`) but its own port and log (`sidecar-extra-N.log`): what one sidecar queues,
   * every sidecar delivers. Returns `{port, child, httpUrl(path), client(opts), stop()}`:
   * `client(opts)` is `stack.client(opts)` connected to this sidecar, `child` its process (to
   * kill it in a test). `stack.stop()` stops every extra sidecar still running.
   */
  async startExtraSidecar(extraEnv = {}) {
    this.extraStarts += 1;
    const port = await freePort();
    const env = { ...this.sidecarEnvironment(), ...extraEnv, PORT: String(port) };
    const child = this.spawnSidecar(env, `sidecar-extra-${this.extraStarts}.log`, `extra sidecar start on port ${port}`);
    const extra = {
      port,
      child,
      httpUrl: (p = '/') => `http://127.0.0.1:${port}${p}`,
      client: (opts = {}) => this.client({ ...opts, port }),
      stop: async () => {
        this.extras.delete(extra);
        await this.stopChild(child);
      },
    };
    this.extras.add(extra);
    try {
      await this.waitHealthy(30000, { child, port });
    } catch (e) {
      await extra.stop();
      throw e;
    }
    return extra;
  }

  sidecarAlive() {
    return !!this.child && !this.child.exitInfo;
  }

  async healthcheck(port = this.port) {
    const ctl = new AbortController();
    const t = setTimeout(() => ctl.abort(), 3000);
    try {
      const res = await fetch(`http://127.0.0.1:${port}/healthcheck`, { signal: ctl.signal });
      await res.arrayBuffer();
      return res.status;
    } catch {
      return 0;
    } finally {
      clearTimeout(t);
    }
  }

  /** Waits for /healthcheck 200 from `child` (default: the main sidecar) on `port`. */
  async waitHealthy(timeout = 30000, { child = this.child, port = this.port } = {}) {
    const deadline = Date.now() + timeout;
    for (;;) {
      if (child?.exitInfo) {
        throw new Error(`sidecar exited during startup (${JSON.stringify(child.exitInfo)}):\n${this.tail(child.logFile)}`);
      }
      if ((await this.healthcheck(port)) === 200) return;
      if (Date.now() > deadline) throw new Error(`sidecar not healthy after ${timeout} ms:\n${this.tail(child?.logFile ?? 'sidecar.log')}`);
      await delay(100);
    }
  }

  async stopSidecar() {
    const child = this.child;
    if (!child) return;
    this.child = null;
    await this.stopChild(child);
  }

  /** SIGTERM (SIGKILL after 10 s) and wait for the exit. */
  async stopChild(child) {
    if (!child.exitInfo) {
      child.kill('SIGTERM');
      const killer = setTimeout(() => child.kill('SIGKILL'), 10000);
      await child.exited;
      clearTimeout(killer);
    }
    child.unrecord();
  }

  /** Stop and start the sidecar on the same port (Postgres and clients stay up). */
  async restartSidecar() {
    await this.stopSidecar();
    await this.startSidecar();
  }

  // ---- clients --------------------------------------------------------------------------------

  /** A real, unmodified RealtimeClient pointed at this sidecar (or the one on `port`). */
  client({ vsn = '2.0.0', apikey = this.anonKey, port = this.port, ...opts } = {}) {
    const c = new RealtimeClient(`ws://127.0.0.1:${port}/realtime/v1`, { params: { apikey }, vsn, ...opts });
    this.clients.add(c);
    return c;
  }

  async closeClient(c) {
    this.clients.delete(c);
    try {
      await withTimeout(
        (async () => {
          await c.removeAllChannels();
          await c.disconnect();
        })(),
        5000,
        'client disconnect',
      );
    } catch {
      /* best effort */
    }
  }

  trackRaw(r) {
    this.raws.add(r);
    return r;
  }

  /**
   * Asserts that the server is still serving: sidecar process alive, /healthcheck 200, and a
   * long-lived canary realtime-js client still receives a fresh SQL broadcast.
   */
  async assertHealthy() {
    if (!this.sidecarAlive()) {
      throw new Error(`sidecar process is gone (${JSON.stringify(this.child?.exitInfo)}):\n${this.tail('sidecar.log')}`);
    }
    const status = await this.healthcheck();
    if (status !== 200) throw new Error(`/healthcheck returned ${status}`);
    if (!this.canary) {
      const client = this.client({ vsn: '2.0.0' });
      this.canary = await join(client, uniq('canary'));
    }
    const event = uniq('canary-ev');
    const n = Math.floor(Math.random() * 1e9);
    await this.broadcast(this.canary.topic, event, { n });
    const msg = await this.canary.inbox.waitFor((m) => m.event === event, 15000, `canary broadcast ${event}`);
    if (msg.payload?.n !== n) throw new Error(`canary payload mismatch: ${preview(msg)}`);
    const bad = this.canary.statuses.items.filter((s) => s.status !== 'SUBSCRIBED');
    if (bad.length) throw new Error(`canary channel saw ${preview(bad.map((s) => s.status))}`);
  }

  // ---- teardown -------------------------------------------------------------------------------

  tail(file, lines = 60) {
    try {
      const text = fs.readFileSync(path.join(this.dir, file), 'utf8').split('\n');
      return `--- tail ${file} ---\n${text.slice(-lines).join('\n')}`;
    } catch {
      return `(no ${file})`;
    }
  }

  saveLogs() {
    const out = process.env.IT_LOG_DIR;
    if (!out || !this.dir) return;
    try {
      const dest = path.join(out, path.basename(this.dir));
      fs.mkdirSync(dest, { recursive: true });
      for (const f of fs.readdirSync(this.dir).filter((name) => name.endsWith('.log'))) {
        const src = path.join(this.dir, f);
        if (fs.existsSync(src)) fs.copyFileSync(src, path.join(dest, f));
      }
    } catch {
      /* best effort */
    }
  }

  async stop() {
    if (this.stopped) return;
    this.stopped = true;
    for (const r of this.raws) r.terminate();
    this.raws.clear();
    await Promise.all([...this.clients].map((c) => this.closeClient(c)));
    for (const s of this.sessions) await s.end().catch(() => {});
    this.sessions.clear();
    await Promise.all([...this.extras].map((x) => x.stop().catch(() => {})));
    await this.stopSidecar().catch(() => {});
    if (this.dir) {
      await this.stopPostgres().catch(() => {});
      this.saveLogs();
      if (!process.env.IT_KEEP) fs.rmSync(this.dir, { recursive: true, force: true });
      this.unrecordDir?.();
    }
    liveStacks.delete(this);
  }

  /** Synchronous last-resort cleanup for process exit / signals. */
  stopSync() {
    if (this.stopped) return;
    this.stopped = true;
    for (const child of [this.child, ...[...this.extras].map((x) => x.child)]) {
      try {
        if (child && !child.exitInfo) child.kill('SIGKILL');
      } catch {
        /* ignore */
      }
    }
    if (this.dir) {
      try {
        execFileSync('bash', [PG_SH, 'stop', this.dir], { stdio: 'ignore', timeout: 60000 });
      } catch {
        /* ignore */
      }
      this.saveLogs();
      if (!process.env.IT_KEEP) fs.rmSync(this.dir, { recursive: true, force: true });
    }
    liveStacks.delete(this);
  }
}

/**
 * SQL for a Supabase-style room membership on private channels: table `public.<table>` (room,
 * user_id, can_write); members may read `readExtensions` of their room (SELECT policy), members
 * with can_write may send broadcasts (INSERT policy). Policies are keyed by the JWT `sub`.
 */
export function roomPoliciesSql(table, { readExtensions = ['broadcast'] } = {}) {
  const extensions = readExtensions.map((e) => `'${e}'`).join(', ');
  return `
    create table public.${table} (room text not null, user_id text not null, can_write boolean not null default false);
    grant select on public.${table} to authenticated;
    create policy "${table} receive" on realtime.messages for select to authenticated
      using (realtime.messages.extension in (${extensions}) and exists (
        select 1 from public.${table} m
         where m.room = realtime.topic()
           and m.user_id = current_setting('request.jwt.claims', true)::jsonb ->> 'sub'));
    create policy "${table} send" on realtime.messages for insert to authenticated
      with check (realtime.messages.extension = 'broadcast' and exists (
        select 1 from public.${table} m
         where m.room = realtime.topic() and m.can_write
           and m.user_id = current_setting('request.jwt.claim.sub', true)));`;
}

export async function startStack(opts = {}) {
  const s = new Stack(opts);
  try {
    await s.start();
  } catch (e) {
    await s.stop().catch(() => {});
    throw e;
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// realtime-js channel helpers

/**
 * Creates a channel on `client`, records every broadcast into `inbox` and every subscribe
 * callback into `statuses` ({status, err}), and subscribes. By default waits for the first
 * status and throws unless it is SUBSCRIBED; with {expect: false} returns immediately.
 */
export async function join(client, topic, { config = {}, timeout = 20000, expect = true } = {}) {
  const inbox = new Inbox(`broadcasts on ${topic}`);
  const statuses = new Inbox(`subscribe statuses of ${topic}`);
  const ch = client.channel(topic, { config });
  ch.on('broadcast', { event: '*' }, (m) => inbox.push(m));
  ch.subscribe((status, err) => statuses.push({ status, err }));
  const handle = { client, ch, inbox, statuses, topic };
  if (!expect) return handle;
  const first = await statuses.waitFor(() => true, timeout, `first subscribe status of ${topic}`);
  if (first.status !== 'SUBSCRIBED') {
    throw new Error(`joining ${topic} gave ${first.status}: ${first.err?.message ?? ''}`);
  }
  return handle;
}

/** Commits a marker broadcast on `topic` and waits until `inbox` has it: a commit-order barrier. */
export async function barrier(stack, handle, timeout = 15000) {
  const event = uniq('barrier');
  await stack.broadcast(handle.topic, event, { barrier: true });
  await handle.inbox.waitFor((m) => m.event === event, timeout, `barrier ${event} on ${handle.topic}`);
  return event;
}

export { Inbox, withTimeout, delay, uniq, preview };
