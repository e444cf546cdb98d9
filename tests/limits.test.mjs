// MAX_FRAME_BYTES: an inbound frame above the limit closes that connection only; the server and
// other clients carry on, and frames below the limit still work.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startStack, join, uniq, withTimeout } from './lib/harness.mjs';
import { RawSocket, encodeKind3 } from './lib/raw.mjs';

const LIMIT = 64 * 1024;
let stack;
before(async () => {
  stack = await startStack({ name: 'limits', sidecarEnv: { MAX_FRAME_BYTES: String(LIMIT) } });
  await stack.assertHealthy();
});
after(async () => {
  await stack?.stop();
});

async function joinedRaw(vsn) {
  const s = stack.trackRaw(await RawSocket.connect(stack.wsUrl({ vsn }), { vsn }));
  const sub = uniq('limit');
  const topic = `realtime:${sub}`;
  const { joinRef, reply } = await s.join(topic);
  assert.equal(reply.payload.status, 'ok');
  return { s, topic, joinRef };
}

const oversized = { type: 'broadcast', event: 'huge', payload: { blob: 'x'.repeat(LIMIT + 4096) } };

for (const vsn of ['1.0.0', '2.0.0']) {
  test(`vsn ${vsn}: an oversized text frame closes the connection; server stays up`, async () => {
    const { s, topic, joinRef } = await joinedRaw(vsn);
    s.push(topic, 'broadcast', oversized, { joinRef });
    const info = await withTimeout(s.closed, 15000, 'server to close the oversized connection');
    assert.equal(info.code, 1009, `closed with ${JSON.stringify(info)}`);
    await stack.assertHealthy();
  });
}

test('vsn 2.0.0: an oversized binary kind-3 frame closes the connection; server stays up', async () => {
  const { s, topic, joinRef } = await joinedRaw('2.0.0');
  s.sendRaw(encodeKind3({ joinRef, ref: '77', topic, event: 'huge', payload: oversized.payload }), { binary: true });
  const info = await withTimeout(s.closed, 15000, 'server to close the oversized connection');
  assert.equal(info.code, 1009, `closed with ${JSON.stringify(info)}`);
  await stack.assertHealthy();
});

test('frames below the limit still work (realtime-js send of ~48 KB, both vsn)', async () => {
  for (const vsn of ['1.0.0', '2.0.0']) {
    const client = stack.client({ vsn });
    try {
      const h = await join(client, uniq('below'), { config: { broadcast: { self: true, ack: true } } });
      const payload = { blob: 'y'.repeat(48 * 1024) };
      assert.equal(await h.ch.send({ type: 'broadcast', event: 'below', payload }), 'ok');
      const m = await h.inbox.waitFor((x) => x.event === 'below');
      assert.deepEqual(m.payload, payload);
    } finally {
      await stack.closeClient(client);
    }
  }
});

test('the inbound limit does not cap outbound frames: a 200 KB SQL broadcast is delivered', async () => {
  const client = stack.client({ vsn: '2.0.0' });
  try {
    const h = await join(client, uniq('outbound'));
    const payload = { blob: 'z'.repeat(200 * 1024) };
    await stack.broadcast(h.topic, 'big-out', payload);
    const m = await h.inbox.waitFor((x) => x.event === 'big-out', 20000);
    assert.deepEqual(m.payload, payload);
  } finally {
    await stack.closeClient(client);
  }
});
