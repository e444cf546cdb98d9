// Attack (issue 10, finding 9, per-connection limits): a 256 KiB topic was accepted (and stored
// in every registry, queue row and reply), presence's 5-calls-per-30-s limit reset when the
// channel re-joined, and refused joins queued their delayed replies without bound. Now topics
// and events have byte limits (MAX_TOPIC_BYTES / MAX_EVENT_BYTES, 255 as in serializer v2),
// presence's window is kept per connection and topic, and a connection with more than
// MAX_PENDING_JOIN_ERRORS refusals waiting is closed (4002). Other clients are unaffected.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startStack, uniq, withTimeout } from '../lib/harness.mjs';
import { RawSocket, DEFAULT_JOIN_CONFIG } from '../lib/raw.mjs';

const PENDING = 10;
let stack;
before(async () => {
  stack = await startStack({
    name: 'sec-input-limits',
    sidecarEnv: { MAX_PENDING_JOIN_ERRORS: String(PENDING), CHANNEL_ERROR_BACKOFF_MS: '2000' },
  });
  await stack.assertHealthy();
});
after(async () => {
  await stack?.stop();
});

async function connect(vsn = '2.0.0') {
  return stack.trackRaw(await RawSocket.connect(stack.wsUrl({ vsn }), { vsn }));
}

for (const vsn of ['1.0.0', '2.0.0']) {
  test(`vsn ${vsn}: a 256 KiB topic is refused; a 255-byte one is accepted`, async () => {
    const s = await connect(vsn);
    const { reply } = await s.join(`realtime:${'t'.repeat(256 * 1024)}`);
    assert.deepEqual(reply.payload, { status: 'error', response: { reason: 'InvalidTopicName: The topic is longer than 255 bytes' } });
    const fits = `realtime:${uniq('t').padEnd(246, 'x')}`;
    assert.equal(Buffer.byteLength(fits), 255);
    assert.equal((await s.join(fits)).reply.payload.status, 'ok');
    await stack.assertHealthy();
  });
}

test('an event over 255 bytes is refused (ack: error), one of 255 bytes is delivered', async () => {
  const sender = await connect();
  const listener = await connect();
  const topic = `realtime:${uniq('ev')}`;
  const config = { ...DEFAULT_JOIN_CONFIG, broadcast: { ack: true, self: false } };
  const { joinRef } = await sender.join(topic, { config });
  await listener.join(topic);
  const long = sender.push(topic, 'broadcast', { type: 'broadcast', event: 'e'.repeat(256), payload: {} }, { joinRef });
  assert.deepEqual((await sender.reply(long)).payload, { status: 'error', response: { reason: 'The event name is longer than 255 bytes' } });
  const ok = sender.push(topic, 'broadcast', { type: 'broadcast', event: 'f'.repeat(255), payload: {} }, { joinRef });
  assert.equal((await sender.reply(ok)).payload.status, 'ok');
  const got = await listener.frames.waitFor((f) => f.event === 'broadcast');
  assert.equal(got.payload.event, 'f'.repeat(255));
  assert.equal(listener.frames.count((f) => f.event === 'broadcast'), 1, 'the long event reached nobody');
  await stack.assertHealthy();
});

test("presence's 5 calls per 30 s are not reset by leaving and re-joining", async () => {
  const s = await connect();
  const topic = `realtime:${uniq('p')}`;
  const config = { ...DEFAULT_JOIN_CONFIG, presence: { enabled: true, key: 'k' } };
  for (let i = 0; i < 5; i++) {
    const { joinRef } = await s.join(topic, { config });
    const ref = s.push(topic, 'presence', { type: 'presence', event: 'track', payload: { i } }, { joinRef });
    assert.equal((await s.reply(ref)).payload.status, 'ok', `track ${i}`);
    assert.equal((await s.reply(s.push(topic, 'phx_leave', {}, { joinRef }))).payload.status, 'ok');
  }
  const { joinRef } = await s.join(topic, { config });
  s.push(topic, 'presence', { type: 'presence', event: 'track', payload: { i: 5 } }, { joinRef });
  const system = await s.frames.waitFor((f) => f.event === 'system' && f.join_ref === joinRef);
  assert.equal(system.payload.message, 'Client presence rate limit exceeded');
  await s.frames.waitFor((f) => f.event === 'phx_close' && f.join_ref === joinRef);
  await stack.assertHealthy();
});

test(`more than ${PENDING} refused joins waiting for their reply close the connection (4002)`, async () => {
  const s = await connect();
  for (let i = 0; i <= PENDING; i++) s.push('realtime:', 'phx_join', { config: DEFAULT_JOIN_CONFIG }, { joinRef: String(i), ref: String(i) });
  const info = await withTimeout(s.closed, 10000, 'the join-looping connection to be closed');
  assert.deepEqual(info, { code: 4002, reason: 'too many refused joins pending' });
  // A client within the limit still gets its (delayed) refusals and stays connected.
  const fine = await connect();
  const { reply } = await fine.join('realtime:');
  assert.equal(reply.payload.response.reason, 'TopicNameRequired: You must provide a topic name');
  assert.equal((await fine.heartbeat()).payload.status, 'ok');
  await stack.assertHealthy();
});
