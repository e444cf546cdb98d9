// Attack (issue 10, cost a client can impose): what one connection makes the server hold.
// Outbound queues were capped in frames only (CLIENT_QUEUE_FRAMES = 1024), and replies echo the
// client's topic, `ref` and `join_ref` up to MAX_FRAME_BYTES: a client that never reads could
// make the sidecar hold ~1024 × 5 MB. Now every connection has a byte budget
// (CLIENT_QUEUE_BYTES: queued frames and join refusals waiting for their backoff), past which it
// is closed as a slow client (4001), and a ref over 64 bytes closes the connection (1008) before
// anything echoes it. The attacker's sockets here stop reading; the sidecar's memory must stay
// bounded, and everyone else must keep receiving everything.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { startStack, join, uniq, withTimeout } from '../lib/harness.mjs';
import { RawSocket } from '../lib/raw.mjs';

const MIB = 1 << 20;
const BUDGET = 4 * MIB;
// The sidecar's memory may grow by this much at most while the attacks below hold their sockets
// open; without the budget they make it hold at least ATTACK_FRAMES MiB.
const ATTACK_FRAMES = 400;
const RSS_BOUND = 128 * MIB;

let stack;
before(async () => {
  stack = await startStack({ name: 'sec-outbound', sidecarEnv: { CLIENT_QUEUE_BYTES: String(BUDGET) } });
  await stack.assertHealthy();
});
after(async () => {
  await stack?.stop();
});

/** VmRSS and VmHWM (peak) of the sidecar process, in bytes. */
function memory() {
  const status = fs.readFileSync(`/proc/${stack.child.pid}/status`, 'utf8');
  const kib = (field) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)[1]) * 1024;
  return { rss: kib('VmRSS'), hwm: kib('VmHWM') };
}

const mib = (bytes) => `${(bytes / MIB).toFixed(1)} MiB`;

function sidecarLog() {
  return fs.readFileSync(path.join(stack.dir, 'sidecar.log'), 'utf8');
}

/** A raw v2 socket joined to `topic` that has stopped reading. */
async function idleAttacker(topic) {
  const s = stack.trackRaw(await RawSocket.connect(stack.wsUrl()));
  if (topic) assert.equal((await s.join(topic)).reply.payload.status, 'ok');
  s.pauseReading();
  return s;
}

/** Resumes reading and waits (bounded) for the socket to end; returns its close info. */
async function endOf(s) {
  s.resumeReading();
  return withTimeout(s.closed, 15000, 'the server to close the attacker');
}

test('a ref or join_ref over 64 bytes closes the connection (1008) without an echo', async () => {
  // A 64-byte ref is still answered.
  const fine = stack.trackRaw(await RawSocket.connect(stack.wsUrl()));
  const ref64 = 'r'.repeat(64);
  fine.push('phoenix', 'heartbeat', {}, { ref: ref64 });
  assert.equal((await fine.reply(ref64)).payload.status, 'ok');

  const bigRef = 'r'.repeat(MIB);
  for (const frame of [
    [null, bigRef, 'phoenix', 'heartbeat', {}],
    [bigRef, '1', 'realtime:room', 'phx_join', { config: {} }],
    ['1', 'r'.repeat(65), 'realtime:room', 'phx_join', { config: {} }],
  ]) {
    const s = stack.trackRaw(await RawSocket.connect(stack.wsUrl()));
    s.sendRaw(JSON.stringify(frame));
    const closed = await withTimeout(s.closed, 15000, 'the server to close the socket');
    assert.deepEqual(closed, { code: 1008, reason: 'ref or join_ref longer than 64 bytes' });
    assert.deepEqual(s.frames.items, [], 'nothing was echoed');
  }
  await stack.assertHealthy();
  assert.equal((await fine.heartbeat()).payload.status, 'ok');
});

test('replies echoing 1 MiB topics to a client that never reads: closed over CLIENT_QUEUE_BYTES, memory bounded', async () => {
  const room = uniq('echo');
  const watcherClient = stack.client();
  const watcher = await join(watcherClient, room);
  const logBefore = sidecarLog().length;
  const before = memory();
  const s = await idleAttacker(`realtime:${uniq('joined')}`);
  const bigTopic = `realtime:${'t'.repeat(MIB)}`;
  let sent = 0;
  let broadcasts = 0;
  while (sent < ATTACK_FRAMES) {
    // Unknown topic: answered at once with an error echoing the topic. A join of an oversized
    // topic: refused after CHANNEL_ERROR_BACKOFF_MS, the reply waiting meanwhile.
    const ref = String(sent);
    const frame = sent % 2 ? [null, ref, bigTopic, 'broadcast', {}] : [ref, ref, bigTopic, 'phx_join', {}];
    if (!(await s.sendAcked(JSON.stringify(frame), { timeout: 5000 }))) break;
    sent += 1;
    // Meanwhile, everyone else's messages flow.
    if (sent % 50 === 1) {
      await stack.broadcast(room, 'during', { sent });
      broadcasts += 1;
    }
  }
  const during = memory();
  const grown = during.rss - before.rss;
  console.log(`echo attack: the server read ${sent} frames of 1 MiB; RSS +${mib(grown)}, peak +${mib(during.hwm - before.hwm)}`);
  assert.ok(sent < ATTACK_FRAMES, `the server read all ${sent} frames: the connection was never closed`);
  assert.ok(grown < RSS_BOUND, `sidecar RSS grew by ${mib(grown)} (budget ${mib(BUDGET)})`);
  assert.ok(during.hwm - before.hwm < 2 * RSS_BOUND, `sidecar peak RSS grew by ${mib(during.hwm - before.hwm)}`);

  await endOf(s);
  assert.match(sidecarLog().slice(logBefore), /closing slow client.*outbound bytes over CLIENT_QUEUE_BYTES/);
  await watcher.inbox.waitForCount(broadcasts, (m) => m.event === 'during', 15000);
  await stack.assertHealthy();
  await stack.closeClient(watcherClient);
});

test('large SQL broadcasts to a subscriber that never reads: it is closed, the others get every one', async () => {
  const room = uniq('big');
  const topic = `realtime:${room}`;
  const COUNT = 24; // 24 MiB: over the budget plus what the socket buffers hold
  const readerClient = stack.client();
  const reader = await join(readerClient, room);
  const logBefore = sidecarLog().length;
  const before = memory();
  const s = await idleAttacker(topic);
  const blob = 'x'.repeat(MIB);
  for (let i = 0; i < COUNT; i++) await stack.broadcast(room, 'big', { i, blob });
  const got = await reader.inbox.waitForCount(COUNT, (m) => m.event === 'big', 60000);
  assert.deepEqual(
    got.map((m) => [m.payload.i, m.payload.blob.length]),
    Array.from({ length: COUNT }, (_, i) => [i, MIB]),
  );
  const during = memory();
  console.log(`SQL broadcasts: RSS +${mib(during.rss - before.rss)}, peak +${mib(during.hwm - before.hwm)}`);
  assert.ok(during.rss - before.rss < RSS_BOUND, `sidecar RSS grew by ${mib(during.rss - before.rss)}`);

  await endOf(s);
  const received = s.frames.items.filter((f) => f.event === 'broadcast').length;
  assert.ok(received < COUNT, `the idle subscriber still received all ${received} broadcasts`);
  assert.match(sidecarLog().slice(logBefore), /closing slow client.*outbound bytes over CLIENT_QUEUE_BYTES/);
  await stack.assertHealthy();
  await stack.closeClient(readerClient);
});

test('one frame larger than the budget still reaches a client that reads', async () => {
  const room = uniq('huge');
  const s = stack.trackRaw(await RawSocket.connect(stack.wsUrl()));
  assert.equal((await s.join(`realtime:${room}`)).reply.payload.status, 'ok');
  await stack.broadcast(room, 'huge', { blob: 'y'.repeat(BUDGET + MIB) });
  const msg = await s.frames.waitFor((f) => f.event === 'broadcast', 30000, 'the large broadcast');
  assert.equal(msg.payload.payload.blob.length, BUDGET + MIB);
  assert.equal((await s.heartbeat()).payload.status, 'ok');
  assert.ok(s.isOpen);
});
