// Frame-level protocol checks with a raw `ws` socket, hostile input, and authentication errors.
// After every piece of bad input the server must stay up and a separate, well-behaved
// realtime-js client (the stack's canary) must still receive SQL broadcasts.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startStack, join, uniq, token } from './lib/harness.mjs';
import { RawSocket, encodeKind3, DEFAULT_JOIN_CONFIG } from './lib/raw.mjs';

const VSNS = ['1.0.0', '2.0.0'];

let stack;
before(async () => {
  stack = await startStack({ name: 'protocol' });
  await stack.assertHealthy(); // joins the canary
});
after(async () => {
  await stack?.stop();
});

async function raw(vsn = '2.0.0', opts = {}) {
  return stack.trackRaw(await RawSocket.connect(stack.wsUrl({ vsn, ...opts }), { vsn }));
}

/** The socket answered a heartbeat after the bad input, i.e. it was neither closed nor wedged. */
async function assertSocketAlive(s) {
  const r = await s.heartbeat();
  assert.deepEqual(r.payload, { status: 'ok', response: {} });
  assert.ok(s.isOpen);
}

describe('frames on the wire', () => {
  for (const vsn of VSNS) {
    test(`vsn ${vsn}: heartbeat, join, SQL broadcast, leave frames`, async () => {
      const s = await raw(vsn);
      // heartbeat
      const hbRef = s.push('phoenix', 'heartbeat', {});
      const hb = await s.reply(hbRef);
      assert.equal(hb.topic, 'phoenix');
      assert.deepEqual(hb.payload, { status: 'ok', response: {} });
      if (vsn === '2.0.0') assert.deepEqual(hb.raw, [null, hbRef, 'phoenix', 'phx_reply', { status: 'ok', response: {} }]);
      else {
        const { topic: t, event: e, payload: p, ref: r } = hb.raw;
        assert.deepEqual({ t, e, p, r }, { t: 'phoenix', e: 'phx_reply', p: { status: 'ok', response: {} }, r: hbRef });
      }

      // join
      const sub = uniq('raw');
      const topic = `realtime:${sub}`;
      const { joinRef, reply } = await s.join(topic);
      assert.equal(reply.topic, topic);
      assert.equal(reply.payload.status, 'ok', JSON.stringify(reply.payload));
      if ('postgres_changes' in reply.payload.response) assert.deepEqual(reply.payload.response, { postgres_changes: [] });
      else assert.deepEqual(reply.payload.response, {});
      if (vsn === '2.0.0') assert.equal(reply.join_ref, joinRef);

      // SQL broadcast
      await stack.broadcast(sub, 'wire', { a: [1, 2], b: 'c' });
      const f = await s.frames.waitFor((x) => x.event === 'broadcast');
      assert.equal(f.topic, topic);
      assert.deepEqual(f.payload, { type: 'broadcast', event: 'wire', payload: { a: [1, 2], b: 'c' } });
      assert.equal(f.ref, null);
      if (vsn === '1.0.0') assert.ok(!f.binary, 'never binary to a v1 client');
      else if (!f.binary) assert.equal(f.join_ref, null);

      // realtime.send: meta carries the id (v1: inside the JSON payload; v2: metadata)
      await stack.sql("select realtime.send('{\"k\":1}'::jsonb, 'wire-send', $1, false)", [sub]);
      const g = await s.frames.waitFor((x) => x.event === 'broadcast' && x.payload.event === 'wire-send');
      assert.equal(g.payload.payload.k, 1);
      assert.equal(g.payload.meta.id, g.payload.payload.id);

      // leave → ok reply and phx_close (ref = join_ref); afterwards nothing more for this topic
      const leaveRef = s.push(topic, 'phx_leave', {}, { joinRef });
      const lr = await s.reply(leaveRef);
      assert.deepEqual(lr.payload, { status: 'ok', response: {} });
      const close = await s.frames.waitFor((x) => x.event === 'phx_close' && x.topic === topic);
      assert.equal(close.ref, joinRef);
      assert.deepEqual(close.payload, {});

      const sub2 = uniq('raw-barrier');
      await s.join(`realtime:${sub2}`);
      await stack.broadcast(sub, 'after-leave', {});
      await stack.broadcast(sub2, 'barrier', {});
      await s.frames.waitFor((x) => x.event === 'broadcast' && x.payload.event === 'barrier');
      assert.equal(s.frames.count((x) => x.event === 'broadcast' && x.payload.event === 'after-leave'), 0);
      s.close();
    });
  }

  test('the Phoenix mount /socket/websocket serves the same protocol', async () => {
    const s = await raw('2.0.0', { path: '/socket/websocket' });
    const sub = uniq('mount');
    const { reply } = await s.join(`realtime:${sub}`);
    assert.equal(reply.payload.status, 'ok');
    await stack.broadcast(sub, 'via-socket-mount', { z: 1 });
    const f = await s.frames.waitFor((x) => x.event === 'broadcast');
    assert.deepEqual(f.payload, { type: 'broadcast', event: 'via-socket-mount', payload: { z: 1 } });
    s.close();
  });

  test('GET /healthcheck answers 200', async () => {
    assert.equal(await stack.healthcheck(), 200);
  });
});

describe('bad input: the server stays up and other clients keep working', () => {
  test('garbage text frames', async () => {
    for (const vsn of VSNS) {
      const s = await raw(vsn);
      for (const g of ['hello{', '', '{"topic":', 'null', '42', '"str"', '\u00ff\u0000\ud800x']) s.sendRaw(g);
      // v2: malformed input is ignored and the socket stays open (PROTOCOL §1.6); v1 may close.
      if (vsn === '2.0.0') await assertSocketAlive(s);
      else await Promise.race([s.heartbeat().catch(() => {}), s.closed]);
      s.terminate();
    }
    // invalid UTF-8 in a text frame: the server may close this socket, but must survive
    const u = await raw('2.0.0');
    u.sendRaw(Buffer.from([0x5b, 0xff, 0xfe, 0xc3, 0x28, 0x5d]), { binary: false });
    await Promise.race([u.heartbeat().catch(() => {}), u.closed]);
    u.terminate();
    await stack.assertHealthy();
  });

  test('wrong-shape v2 arrays are ignored and the socket stays open', async () => {
    const s = await raw('2.0.0');
    const sub = uniq('shape');
    const { joinRef } = await s.join(`realtime:${sub}`);
    const bad = [
      [],
      [1, 2, 3],
      ['1', '2', `realtime:${sub}`, 'broadcast'],
      [null, '3', `realtime:${sub}`, 7, {}],
      [null, '4', 7, 'heartbeat', {}],
      [null, '5', 'phoenix', 'heartbeat', 'not-an-object'],
      [joinRef, '6', `realtime:${sub}`, 'broadcast', null],
      [joinRef, '7', `realtime:${sub}`, 'broadcast', { type: 'broadcast', event: 42, payload: 'x' }],
      { topic: 'phoenix', event: 'heartbeat', payload: {}, ref: '8' },
      JSON.parse('['.repeat(64) + ']'.repeat(64)),
    ];
    for (const b of bad) s.sendRaw(JSON.stringify(b));
    await assertSocketAlive(s);
    // still joined: the topic's broadcasts still arrive
    await stack.broadcast(sub, 'still-joined', { ok: 1 });
    const f = await s.frames.waitFor((x) => x.event === 'broadcast' && x.payload.event === 'still-joined');
    assert.deepEqual(f.payload.payload, { ok: 1 });
    s.terminate();
    await stack.assertHealthy();
  });

  test('binary frames with lying lengths / unknown kinds', async () => {
    const s = await raw('2.0.0');
    const sub = uniq('bin');
    const topic = `realtime:${sub}`;
    const { joinRef } = await s.join(topic);
    const good = { joinRef, ref: '900', topic, event: 'ev', payload: { a: 1 } };
    const frames = [
      Buffer.alloc(0),
      Buffer.from([3]),
      Buffer.from([3, 1, 1, 1, 1, 0]),
      encodeKind3({ ...good, lens: { topic: 255 } }),
      encodeKind3({ ...good, lens: { joinRef: 200, ref: 200, topic: 200, event: 200, meta: 200 } }),
      encodeKind3({ ...good, lens: { meta: 3 } }),
      encodeKind3({ ...good, encoding: 7 }),
      encodeKind3({ ...good, payload: Buffer.from('{not json') }),
      encodeKind3({ ...good, topic: 'realtime:\u00ff', lens: { topic: 11 } }).subarray(0, 12),
      Buffer.from([4, 5, 5, 0, 1, 0x61]),
      Buffer.from([0, 1, 1, 1, 1]),
      Buffer.from([1, 2, 3, 4, 5, 6, 7]),
      Buffer.from([2, 255, 255]),
      Buffer.from([255, 255, 255, 255, 255, 255, 255, 255]),
    ];
    for (const f of frames) s.sendRaw(f, { binary: true });
    await assertSocketAlive(s);
    await stack.broadcast(sub, 'after-binary', { ok: 2 });
    const f = await s.frames.waitFor((x) => x.event === 'broadcast' && x.payload.event === 'after-binary');
    assert.deepEqual(f.payload.payload, { ok: 2 });
    s.terminate();
    await stack.assertHealthy();
  });

  for (const vsn of VSNS) {
    test(`vsn ${vsn}: unknown event on a joined topic gets no reply and keeps the socket`, async () => {
      const s = await raw(vsn);
      const sub = uniq('unknown');
      const topic = `realtime:${sub}`;
      const { joinRef } = await s.join(topic);
      const ref = s.push(topic, 'no_such_event', { x: 1 }, { joinRef });
      await assertSocketAlive(s); // heartbeat reply after the unknown event
      await stack.broadcast(sub, 'still-there', {});
      await s.frames.waitFor((x) => x.event === 'broadcast' && x.payload.event === 'still-there');
      assert.equal(s.frames.count((x) => x.ref === ref), 0, 'no reply to the unknown event');
      assert.equal(s.frames.count((x) => x.event === 'phx_close' || x.event === 'phx_error'), 0);
      s.terminate();
      await stack.assertHealthy();
    });

    test(`vsn ${vsn}: push to an unjoined topic → error "unmatched topic"`, async () => {
      const s = await raw(vsn);
      const topic = `realtime:${uniq('unjoined')}`;
      for (const event of ['broadcast', 'presence', 'access_token', 'whatever']) {
        const ref = s.push(topic, event, { type: 'broadcast', event: 'x', payload: {} }, { joinRef: '1' });
        const r = await s.reply(ref);
        assert.equal(r.topic, topic);
        assert.deepEqual(r.payload, { status: 'error', response: { reason: 'unmatched topic' } });
        if (vsn === '2.0.0') assert.equal(r.join_ref, null);
      }
      await assertSocketAlive(s);
      s.terminate();
      await stack.assertHealthy();
    });
  }
});

describe('connection authentication (HTTP 401 on upgrade)', () => {
  const cases = [
    ['a JWT with a bad signature', () => token({ role: 'anon' }, { secret: 'not-the-secret-not-the-secret-xx' }), 'Failed to validate JWT signature'],
    ['a JWT without exp', () => stack.token({ role: 'anon', exp: null }), 'Fields `role` and `exp` are required in JWT'],
    ['a JWT without role', () => stack.token({ role: null }), 'Fields `role` and `exp` are required in JWT'],
    ['an expired JWT', () => stack.token({ role: 'anon', exp: Math.floor(Date.now() / 1000) - 120 }), 'Token has expired'],
    ['a token that is not a JWT', () => 'not-a-jwt', 'The token provided is not a valid JWT'],
    ['no apikey', () => null, 'API key is missing'],
  ];
  for (const [name, mk, message] of cases) {
    test(`${name} → 401 ${message}`, async () => {
      const r = await RawSocket.refusal(stack.wsUrl({ apikey: mk() }));
      assert.equal(r.status, 401, r.body);
      assert.deepEqual(r.json, { error: message }, r.body);
      await stack.assertHealthy();
    });
  }

  test('a valid token is accepted on both mounts', async () => {
    for (const p of ['/realtime/v1/websocket', '/socket/websocket']) {
      const s = await raw('2.0.0', { path: p, apikey: stack.token({ role: 'authenticated', sub: 'u1' }) });
      await assertSocketAlive(s);
      s.terminate();
    }
  });
});

describe('join errors (phx_reply status error)', () => {
  for (const vsn of VSNS) {
    describe(`vsn ${vsn}`, () => {
      /** Subscribes with realtime-js and returns the first CHANNEL_ERROR's message and cause. */
      async function joinError(topic, { config = {}, accessToken } = {}) {
        const client = stack.client({ vsn });
        try {
          if (accessToken) await client.setAuth(accessToken);
          const h = await join(client, topic, { config, expect: false });
          const first = await h.statuses.waitFor(() => true, 20000, `join result of ${topic}`);
          assert.equal(first.status, 'CHANNEL_ERROR', `expected CHANNEL_ERROR, got ${first.status}`);
          return { message: first.err?.message, cause: first.err?.cause };
        } finally {
          await stack.closeClient(client);
          await stack.assertHealthy();
        }
      }

      test('bad access_token signature → JwtSignatureError', async () => {
        const bad = token({ role: 'authenticated' }, { secret: 'wrong-secret-wrong-secret-wrong-secret' });
        const e = await joinError(uniq('jwt'), { accessToken: bad });
        assert.equal(e.message, 'JwtSignatureError: Failed to validate JWT signature');
        assert.deepEqual(e.cause, { reason: 'JwtSignatureError: Failed to validate JWT signature' });
      });

      test('expired access_token → InvalidJWTToken: Token has expired N seconds ago', async () => {
        const expired = stack.token({ role: 'authenticated', exp: Math.floor(Date.now() / 1000) - 30 });
        const e = await joinError(uniq('jwt'), { accessToken: expired });
        assert.match(e.message, /^InvalidJWTToken: Token has expired \d+ seconds ago$/);
      });

      test('access_token without exp → InvalidJWTToken: Fields `role` and `exp` are required', async () => {
        const e = await joinError(uniq('jwt'), { accessToken: stack.token({ role: 'authenticated', exp: null }) });
        assert.equal(e.message, 'InvalidJWTToken: Fields `role` and `exp` are required in JWT');
      });

      test('private channel without a read policy → Unauthorized', async () => {
        const sub = uniq('private');
        const e = await joinError(sub, { config: { private: true } });
        const reason = `Unauthorized: You do not have permissions to read from this Channel topic: ${sub}`;
        assert.equal(e.message, reason);
        assert.deepEqual(e.cause, { reason });
      });

      test('empty topic realtime: → TopicNameRequired', async () => {
        const e = await joinError('');
        assert.equal(e.message, 'TopicNameRequired: You must provide a topic name');
        assert.deepEqual(e.cause, { reason: 'TopicNameRequired: You must provide a topic name' });
      });
    });
  }

  test('raw: join error reply frame shape (v2), socket stays usable', async () => {
    const s = await raw('2.0.0');
    const ref = s.nextRef();
    s.push('realtime:', 'phx_join', { config: DEFAULT_JOIN_CONFIG }, { joinRef: ref, ref });
    const r = await s.reply(ref);
    assert.deepEqual(r.raw, [ref, ref, 'realtime:', 'phx_reply', { status: 'error', response: { reason: 'TopicNameRequired: You must provide a topic name' } }]);
    const sub = uniq('after-error');
    const { reply } = await s.join(`realtime:${sub}`);
    assert.equal(reply.payload.status, 'ok');
    await stack.broadcast(sub, 'ok-after-error', {});
    await s.frames.waitFor((x) => x.event === 'broadcast' && x.payload.event === 'ok-after-error');
    s.terminate();
    await stack.assertHealthy();
  });
});
