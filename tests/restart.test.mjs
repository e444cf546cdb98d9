// Restarts: the sidecar (clients reconnect and rejoin by themselves) and Postgres (clients stay
// connected to the sidecar; nothing committed after Postgres is back is lost).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startStack, join, uniq } from './lib/harness.mjs';

let stack;
before(async () => {
  stack = await startStack({ name: 'restart' });
});
after(async () => {
  await stack?.stop();
});

/** One v1 and one v2 realtime-js client joined to the same topic. */
async function joinBoth(topic) {
  const hs = [];
  for (const vsn of ['1.0.0', '2.0.0']) hs.push(await join(stack.client({ vsn }), topic));
  return hs;
}

/** Commits `n` broadcasts, each in its own transaction, on one connection. */
async function commitSequence(topic, event, n) {
  const s = await stack.session();
  for (let i = 1; i <= n; i++) {
    await s.query('select realtime.broadcast($1, $2, jsonb_build_object($3::text, $4::int))', [topic, event, 'i', i]);
  }
  await s.end();
  stack.sessions.delete(s);
}

async function expectSequence(h, event, n, timeout = 60000) {
  const got = await h.inbox.waitForCount(n, (m) => m.event === event, timeout, `${n} '${event}' messages (${h.client.vsn})`);
  assert.deepEqual(
    got.map((m) => m.payload.i),
    Array.from({ length: n }, (_, i) => i + 1),
    `${event} in order, complete (${h.client.vsn})`,
  );
}

const statusList = (h) => h.statuses.items.map((s) => s.status);

test('sidecar restart: clients reconnect, rejoin and receive everything committed after the rejoin', async () => {
  const topic = uniq('sidecar-restart');
  const hs = await joinBoth(topic);
  await stack.broadcast(topic, 'before', { n: 0 });
  for (const h of hs) assert.deepEqual((await h.inbox.waitFor((m) => m.event === 'before')).payload, { n: 0 });

  await stack.restartSidecar();
  for (const h of hs) {
    await h.statuses.waitForCount(2, (s) => s.status === 'SUBSCRIBED', 60000, `second SUBSCRIBED (${h.client.vsn})`);
  }
  await commitSequence(topic, 'after', 25);
  for (const h of hs) await expectSequence(h, 'after', 25);
  for (const h of hs) {
    const st = statusList(h);
    assert.equal(st[0], 'SUBSCRIBED');
    assert.equal(st.at(-1), 'SUBSCRIBED');
    assert.ok(st.includes('CHANNEL_ERROR'), `the client noticed the restart: ${st}`);
    assert.equal(h.inbox.count((m) => m.event === 'before'), 1, 'no replay of old messages');
  }
});

for (const [name, restart] of [
  ['fast shutdown', () => stack.restartPostgres()],
  ['crash (immediate shutdown, unlogged queue reset)', () => stack.crashPostgres()],
]) {
  test(`postgres restart (${name}): clients stay connected, nothing committed after the restart is lost`, async () => {
    const topic = uniq('pg-restart');
    const hs = await joinBoth(topic);
    await stack.broadcast(topic, 'before', { n: 0 });
    for (const h of hs) await h.inbox.waitFor((m) => m.event === 'before');

    for (let round = 1; round <= 2; round++) {
      await restart();
      await commitSequence(topic, `after-${round}`, 25);
      for (const h of hs) await expectSequence(h, `after-${round}`, 25);
    }
    for (const h of hs) {
      assert.deepEqual(statusList(h), ['SUBSCRIBED'], `client (${h.client.vsn}) stayed joined`);
      assert.ok(h.client.isConnected());
    }
    // a fresh client joining after all this works too
    const late = await join(stack.client({ vsn: '2.0.0' }), topic);
    await stack.broadcast(topic, 'late', { ok: true });
    assert.deepEqual((await late.inbox.waitFor((m) => m.event === 'late')).payload, { ok: true });
  });
}
