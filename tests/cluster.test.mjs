// Client broadcast and presence across several sidecars on one database (through Postgres, no
// other infrastructure), with unmodified realtime-js clients; limits; a client that never reads.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startStack, join, uniq, delay, Inbox } from './lib/harness.mjs';
import { RawSocket } from './lib/raw.mjs';
import { eventually } from './lib/util.mjs';

const MAX_PAYLOAD = 20000;
let stack;
let b;
let c;

before(async () => {
  stack = await startStack({
    name: 'cluster',
    sidecarEnv: { MAX_PAYLOAD_BYTES: String(MAX_PAYLOAD) },
  });
  b = await stack.startExtraSidecar();
  c = await stack.startExtraSidecar();
  await stack.assertHealthy();
});
after(async () => {
  await stack?.stop();
});

/** A channel on `client` with broadcast and presence listeners, subscribed. */
async function channel(client, topic, config = {}) {
  const inbox = new Inbox(`broadcasts on ${topic}`);
  const presence = new Inbox(`presence on ${topic}`);
  const statuses = new Inbox(`statuses of ${topic}`);
  const system = new Inbox(`system on ${topic}`);
  const ch = client.channel(topic, { config });
  ch.on('broadcast', { event: '*' }, (m) => inbox.push(m));
  ch.on('presence', { event: 'sync' }, () => presence.push({ event: 'sync', state: ch.presenceState() }));
  ch.on('presence', { event: 'join' }, (e) => presence.push(e));
  ch.on('presence', { event: 'leave' }, (e) => presence.push(e));
  ch.on('system', {}, (m) => system.push(m));
  ch.subscribe((status, err) => statuses.push({ status, err }));
  const first = await statuses.waitFor(() => true, 20000, `subscribe ${topic}`);
  assert.equal(first.status, 'SUBSCRIBED', first.err?.message);
  return { ch, inbox, presence, statuses, system, topic };
}

/** Waits until `h`'s presence state has exactly `keys`. */
async function presenceKeys(h, keys, label) {
  await eventually(() => {
    const have = Object.keys(h.ch.presenceState()).sort();
    return JSON.stringify(have) === JSON.stringify([...keys].sort());
  }, { timeout: 15000, label: `${label}: presence keys ${keys}` });
}

describe('broadcast across sidecars', () => {
  test('a client on one sidecar reaches the others, in send order; self and ack honoured', async () => {
    const topic = uniq('room');
    const onA = await channel(stack.client(), topic, { broadcast: { self: false, ack: true } });
    const onB = await channel(b.client(), topic);
    const onC = await channel(c.client({ vsn: '1.0.0' }), topic);
    const selfA = await channel(stack.client(), topic, { broadcast: { self: true } });

    for (let i = 0; i < 50; i += 1) {
      assert.equal(await onA.ch.send({ type: 'broadcast', event: 'seq', payload: { i } }), 'ok');
    }
    for (const h of [onB, onC, selfA]) {
      await h.inbox.waitForCount(50, (m) => m.event === 'seq', 15000, `50 on ${h.topic}`);
      assert.deepEqual(h.inbox.items.filter((m) => m.event === 'seq').map((m) => m.payload.i), [...Array(50).keys()]);
    }
    assert.equal(onA.inbox.count((m) => m.event === 'seq'), 0, 'self: false');

    // A v1 client on C sends JSON; v2 clients on A and B get it.
    await onC.ch.send({ type: 'broadcast', event: 'from-v1', payload: { v: 1 } });
    for (const h of [onA, onB]) assert.deepEqual((await h.inbox.waitFor((m) => m.event === 'from-v1')).payload, { v: 1 });
    // A self: true sender hears itself once, not twice (its own sidecar skips the queued copy).
    await selfA.ch.send({ type: 'broadcast', event: 'echo', payload: {} });
    await onB.inbox.waitFor((m) => m.event === 'echo');
    await delay(300);
    assert.equal(selfA.inbox.count((m) => m.event === 'echo'), 1);
  });

  test('binary payloads cross sidecars as binary', async () => {
    const topic = uniq('bin');
    const sender = await channel(stack.client(), topic, { broadcast: { ack: true } });
    const receiver = await channel(b.client(), topic);
    const bytes = new Uint8Array([1, 2, 3, 250]);
    assert.equal(await sender.ch.send({ type: 'broadcast', event: 'blob', payload: bytes.buffer }), 'ok');
    const m = await receiver.inbox.waitFor((x) => x.event === 'blob');
    assert.deepEqual([...new Uint8Array(m.payload)], [1, 2, 3, 250]);
  });

  test('an oversize payload: payload_size_exceeded with ack, dropped without; nobody receives it', async () => {
    const topic = uniq('big');
    const acked = await channel(stack.client(), topic, { broadcast: { ack: true } });
    const silent = await channel(stack.client(), topic, { broadcast: { ack: false } });
    const other = await channel(b.client(), topic);
    const big = { blob: 'x'.repeat(MAX_PAYLOAD + 1) };
    assert.equal(await acked.ch.send({ type: 'broadcast', event: 'big', payload: big }), 'error');
    assert.equal(await silent.ch.send({ type: 'broadcast', event: 'big', payload: big }), 'ok');
    await acked.ch.send({ type: 'broadcast', event: 'small', payload: {} });
    await other.inbox.waitFor((m) => m.event === 'small');
    assert.equal(other.inbox.count((m) => m.event === 'big'), 0);
    // The REST single endpoint applies the same limit to its body.
    const res = await fetch(stack.httpUrl(`/realtime/v1/api/broadcast/${topic}/events/big`), {
      method: 'POST',
      headers: { apikey: stack.anonKey, 'content-type': 'application/json' },
      body: JSON.stringify(big),
    });
    assert.equal(res.status, 413);
    await stack.assertHealthy();
  });
});

describe('presence across sidecars', () => {
  test('join, update and leave are seen on every sidecar; presence_state includes other sidecars', async () => {
    const topic = uniq('lobby');
    const x = await channel(stack.client(), topic, { presence: { key: 'x' } });
    assert.equal(await x.ch.track({ name: 'x', v: 1 }), 'ok');
    // y joins later on B: its presence_state already holds x (tracked on A).
    const y = await channel(b.client(), topic, { presence: { key: 'y' } });
    await presenceKeys(y, ['x'], 'y sees x');
    assert.equal(y.ch.presenceState().x[0].name, 'x');
    assert.equal(await y.ch.track({ name: 'y' }), 'ok');
    await presenceKeys(x, ['x', 'y'], 'x sees y');
    // Update: the new meta replaces the old one, still one meta for x.
    assert.equal(await x.ch.track({ name: 'x', v: 2 }), 'ok');
    await eventually(() => y.ch.presenceState().x?.length === 1 && y.ch.presenceState().x[0].v === 2,
      { label: 'y sees x updated' });
    // SQL sees the cluster's presence too.
    const rows = await stack.sql('select key, meta from realtime.presence where topic = $1 order by key', [topic]);
    assert.deepEqual(rows.map((r) => [r.key, r.meta.name]), [['x', 'x'], ['y', 'y']]);
    // Untrack on A, leave on B.
    assert.equal(await x.ch.untrack(), 'ok');
    await presenceKeys(y, ['y'], 'x untracked');
    await y.ch.unsubscribe();
    await presenceKeys(x, [], 'y left');
  });

  test('one key, several metas (two tabs on two sidecars); a closed socket leaves', async () => {
    const topic = uniq('tabs');
    const tab1 = await channel(stack.client(), topic, { presence: { key: 'sam' } });
    const tab2Client = c.client();
    const tab2 = await channel(tab2Client, topic, { presence: { key: 'sam' } });
    const watcher = await channel(b.client(), topic, { presence: { key: 'w' } });
    assert.equal(await tab1.ch.track({ tab: 1 }), 'ok');
    assert.equal(await tab2.ch.track({ tab: 2 }), 'ok');
    await eventually(() => watcher.ch.presenceState().sam?.length === 2, { label: 'two metas for sam' });
    assert.deepEqual(watcher.ch.presenceState().sam.map((m) => m.tab).sort(), [1, 2]);
    tab2Client.disconnect(); // the socket ends without a phx_leave: its presence leaves
    await eventually(() => watcher.ch.presenceState().sam?.length === 1, { label: 'one meta left' });
    assert.equal(watcher.ch.presenceState().sam[0].tab, 1);
  });

  test('a killed sidecar\'s presences leave everywhere within 10 s', async () => {
    const topic = uniq('lobby');
    const doomed = await stack.startExtraSidecar();
    const z = await channel(doomed.client(), topic, { presence: { key: 'z' } });
    assert.equal(await z.ch.track({ name: 'z' }), 'ok');
    const watcher = await channel(b.client(), topic, { presence: { key: 'w' } });
    await presenceKeys(watcher, ['z'], 'watcher sees z');
    doomed.child.kill('SIGKILL');
    const t0 = Date.now();
    await presenceKeys(watcher, [], 'z gone');
    const took = Date.now() - t0;
    assert.ok(took < 10000, `left after ${took} ms`);
    const rows = await stack.sql('select count(*)::int as n from realtime.presence where topic = $1', [topic]);
    assert.equal(rows[0].n, 0);
  });

  test('limits: a non-object track payload, the per-channel rate, the payload size', async () => {
    const topic = uniq('limits');
    const h = await channel(stack.client(), topic, { presence: { key: 'k' } });
    const s = await RawSocket.connect(stack.wsUrl());
    stack.trackRaw(s);
    const { joinRef } = await s.join(`realtime:${topic}`, { config: { presence: { enabled: true, key: 'raw' } } });
    const ref = s.push(`realtime:${topic}`, 'presence', { type: 'presence', event: 'track', payload: 'online' }, { joinRef });
    assert.deepEqual((await s.reply(ref)).payload, { status: 'error', response: { reason: 'Presence track payload must be a map' } });

    const big = { blob: 'x'.repeat(MAX_PAYLOAD + 1) };
    const bigRef = s.push(`realtime:${topic}`, 'presence', { type: 'presence', event: 'track', payload: big }, { joinRef });
    const closed = await s.frames.waitFor((f) => f.event === 'system' && f.topic === `realtime:${topic}`);
    assert.equal(closed.payload.message, 'Track message size exceeded');
    await s.frames.waitFor((f) => f.event === 'phx_close');
    assert.ok(bigRef);

    for (let i = 0; i < 5; i += 1) assert.equal(await h.ch.track({ i }), 'ok');
    h.ch.track({ i: 'one too many' }); // never answered: the channel is closed instead
    const sys = await h.system.waitFor((m) => m.status === 'error');
    assert.equal(sys.message, 'Client presence rate limit exceeded');
    await h.statuses.waitFor((x) => x.status === 'CLOSED');
    await stack.assertHealthy();
  });
});

describe('event rate limit', () => {
  test('over MAX_EVENTS_PER_SECOND the sending channel is closed; other sidecars unaffected', async () => {
    const limited = await stack.startExtraSidecar({ MAX_EVENTS_PER_SECOND: '5' });
    const topic = uniq('rate');
    const h = await channel(limited.client(), topic, { broadcast: { ack: true } });
    const elsewhere = await channel(b.client(), topic);
    for (let i = 0; i < 5; i += 1) h.ch.send({ type: 'broadcast', event: 'burst', payload: { i } });
    h.ch.send({ type: 'broadcast', event: 'burst', payload: { i: 5 } });
    const sys = await h.system.waitFor((m) => m.status === 'error');
    assert.equal(sys.message, 'Too many messages per second');
    await h.statuses.waitFor((x) => x.status === 'CLOSED');
    await elsewhere.inbox.waitForCount(5, (m) => m.event === 'burst');
    await delay(300);
    assert.deepEqual(elsewhere.inbox.items.map((m) => m.payload.i), [0, 1, 2, 3, 4]);
    await limited.stop();
  });
});

describe('slow consumers', () => {
  test('a client that never reads is closed; everyone else gets everything', async () => {
    const topic = uniq('flood');
    const s = await RawSocket.connect(stack.wsUrl());
    stack.trackRaw(s);
    await s.join(`realtime:${topic}`);
    s.ws._socket.pause(); // stop reading: the kernel buffers fill, then the server's queue
    const reader = await channel(stack.client(), topic);
    const remote = await channel(b.client(), topic);
    // 3,000 x 4 KB = 12 MB: more than the kernel's socket buffers and the 1,024-frame queue
    // hold, paced so that a client that does read keeps up.
    const payload = { blob: 'y'.repeat(4000) };
    const N = 3000;
    const session = await stack.session();
    for (let i = 0; i < N; i += 50) {
      await session.query('select realtime.broadcast($1, $2, $3::jsonb || jsonb_build_object(\'i\', g)) from generate_series($4::int, $5::int) g',
        [topic, 'flood', JSON.stringify(payload), i, i + 49]);
      await delay(5);
    }
    for (const h of [reader, remote]) {
      await h.inbox.waitForCount(N, (m) => m.event === 'flood', 30000, `all ${N} on ${h.topic}`);
      assert.deepEqual(h.inbox.items.filter((m) => m.event === 'flood').map((m) => m.payload.i), [...Array(N).keys()]);
    }
    s.ws._socket.resume();
    const info = await s.closed;
    assert.ok([4001, 1006].includes(info.code), `closed with ${info.code}`);
    await stack.assertHealthy();
  });
});
