// REST broadcast endpoints (docs/protocol.md §8) against the real stack: realtime-js `httpSend`
// and the `send()` REST fallback, then raw fetch for every refusal. Deliveries go through
// Postgres, so a second sidecar on the same database delivers them too. Leak checks put a barrier
// message after the one that must not arrive and then assert the exact inbox.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { startStack, join, barrier, uniq, roomPoliciesSql } from './lib/harness.mjs';

const MAX_FRAME_BYTES = 100000;
const UNSUPPORTED = 'Unsupported Media Type. Use application/json or application/octet-stream';
let stack;

const now = () => Math.floor(Date.now() / 1000);
const userToken = (sub, claims = {}) => stack.token({ sub, role: 'authenticated', ...claims });
/** realtime-js logs the REST fallback's deprecation warning here instead of the console. */
const quiet = () => {};
const events = (h) => h.inbox.items.map((m) => m.event);

before(async () => {
  stack = await startStack({ name: 'rest', sidecarEnv: { MAX_FRAME_BYTES: String(MAX_FRAME_BYTES) } });
  await stack.sql(roomPoliciesSql('rest_members'));
});
after(async () => {
  await stack?.stop();
});

async function addMember(room, user, canWrite = false) {
  await stack.sql('insert into public.rest_members values ($1, $2, $3)', [room, user, canWrite]);
}

/** A client that only sends over REST (never connects its socket), with `token` set if given. */
async function sender({ token, ...opts } = {}) {
  const client = stack.client({ logger: quiet, ...opts });
  if (token) await client.setAuth(token);
  return client;
}

/** `sub`'s realtime-js client joined to private `room`. */
async function privateJoin(sub, room) {
  const client = stack.client();
  client.setAuth(userToken(sub));
  return join(client, room, { config: { private: true } });
}

/** Barrier for a private channel: a committed realtime.send, then wait for it. */
async function privateBarrier(handle) {
  const event = uniq('barrier');
  await stack.sql('select realtime.send($1::jsonb, $2, $3)', ['{}', event, handle.topic]);
  await handle.inbox.waitFor((m) => m.event === event, 15000, `private barrier ${event} on ${handle.topic}`);
  return event;
}

/**
 * POST to a REST endpoint of the sidecar (`path` below /realtime/v1/api/broadcast). `body` is
 * JSON-encoded unless it is a string or bytes; `token` goes in `Authorization: Bearer`.
 */
async function post(path, { body, token = stack.anonKey, headers = {}, base = stack.httpUrl() } = {}) {
  const encoded = typeof body === 'string' || body instanceof Uint8Array ? body : JSON.stringify(body);
  const all = { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}), ...headers };
  for (const [k, v] of Object.entries(all)) if (v === null) delete all[k];
  const res = await fetch(new URL(`realtime/v1/api/broadcast${path}`, base), { method: 'POST', headers: all, body: encoded });
  const text = await res.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    /* not JSON */
  }
  return { status: res.status, text, json };
}

const batch = (messages, opts = {}) => post('', { ...opts, body: { messages } });
const single = (topic, event, opts = {}) =>
  post(`/${encodeURIComponent(topic)}/events/${encodeURIComponent(event)}${opts.query ?? ''}`, opts);

describe('realtime-js', () => {
  test('httpSend (public, JSON): 202, delivered to v1 and v2 subscribers without meta', async () => {
    const topic = uniq('room 1/x ✓');
    const v2 = await join(stack.client(), topic);
    const v1 = await join(stack.client({ vsn: '1.0.0' }), topic);
    const ch = (await sender()).channel(topic);
    const payload = { a: 1, nested: { list: [true, null, 'é'] } };
    assert.deepEqual(await ch.httpSend('json-evt', payload), { success: true });
    for (const h of [v1, v2]) {
      const m = await h.inbox.waitFor((x) => x.event === 'json-evt');
      assert.deepEqual(m, { type: 'broadcast', event: 'json-evt', payload });
    }
    // Any JSON value is a payload.
    assert.deepEqual(await ch.httpSend('scalar', 'just text'), { success: true });
    assert.equal((await v2.inbox.waitFor((x) => x.event === 'scalar')).payload, 'just text');
  });

  test('httpSend (public, bytes): binary to v2 subscribers, nothing to v1', async () => {
    const topic = uniq('bin');
    const v2 = await join(stack.client(), topic);
    const v1 = await join(stack.client({ vsn: '1.0.0' }), topic);
    const ch = (await sender()).channel(topic);
    assert.deepEqual(await ch.httpSend('u8', new Uint8Array([0, 1, 2, 254, 255])), { success: true });
    assert.deepEqual(await ch.httpSend('ab', new Uint8Array([9, 8, 7]).buffer), { success: true });
    const u8 = await v2.inbox.waitFor((x) => x.event === 'u8');
    assert.ok(u8.payload instanceof ArrayBuffer, `payload is ${Object.prototype.toString.call(u8.payload)}`);
    assert.deepEqual([...new Uint8Array(u8.payload)], [0, 1, 2, 254, 255]);
    assert.equal(u8.meta, undefined);
    const ab = await v2.inbox.waitFor((x) => x.event === 'ab');
    assert.deepEqual([...new Uint8Array(ab.payload)], [9, 8, 7]);
    await barrier(stack, v1);
    assert.equal(v1.inbox.items.filter((m) => m.event === 'u8' || m.event === 'ab').length, 0);
  });

  test('httpSend (private): a writer delivers to private members only; others get Unauthorized', async () => {
    const room = uniq('room');
    await addMember(room, 'writer', true);
    await addMember(room, 'reader');
    const reader = await privateJoin('reader', room);
    const publicSame = await join(stack.client(), room);
    const asWriter = (await sender({ token: userToken('writer') })).channel(room, { config: { private: true } });
    assert.deepEqual(await asWriter.httpSend('from-writer', { w: 1 }), { success: true });
    assert.deepEqual(await asWriter.httpSend('bin', new Uint8Array([1, 2])), { success: true });
    const asReader = (await sender({ token: userToken('reader') })).channel(room, { config: { private: true } });
    await assert.rejects(asReader.httpSend('from-reader', {}), { message: 'Unauthorized' });
    // The anon key alone (no user token) has no policy either.
    const asAnon = (await sender()).channel(room, { config: { private: true } });
    await assert.rejects(asAnon.httpSend('from-anon', {}), { message: 'Unauthorized' });

    const end = await privateBarrier(reader);
    assert.deepEqual(events(reader), ['from-writer', 'bin', end]);
    assert.deepEqual(reader.inbox.items[0].payload, { w: 1 });
    await barrier(stack, publicSame);
    assert.equal(publicSame.inbox.items.filter((m) => !m.event.startsWith('barrier')).length, 0);
  });

  test('send() on a channel that is not joined falls back to POST /api/broadcast', async () => {
    const topic = uniq('fallback');
    const sub = await join(stack.client(), topic);
    const ch = (await sender()).channel(topic);
    assert.equal(await ch.send({ type: 'broadcast', event: 'fb', payload: { z: 1 } }), 'ok');
    assert.deepEqual(await sub.inbox.waitFor((m) => m.event === 'fb'), { type: 'broadcast', event: 'fb', payload: { z: 1 } });

    // Private: the writer's message arrives; a non-writer's is skipped, yet resolves 'ok'.
    const room = uniq('room');
    await addMember(room, 'fb-writer', true);
    await addMember(room, 'fb-reader');
    const reader = await privateJoin('fb-reader', room);
    const privateCh = async (sub) => (await sender({ token: userToken(sub) })).channel(room, { config: { private: true } });
    assert.equal(await (await privateCh('fb-reader')).send({ type: 'broadcast', event: 'denied', payload: {} }), 'ok');
    assert.equal(await (await privateCh('fb-writer')).send({ type: 'broadcast', event: 'allowed', payload: {} }), 'ok');
    const end = await privateBarrier(reader);
    assert.deepEqual(events(reader), ['allowed', end]);
  });
});

describe('batch endpoint', () => {
  test('order of a batch of 50 is preserved, and of consecutive requests', async () => {
    const topic = uniq('order');
    const sub = await join(stack.client(), topic);
    const messages = Array.from({ length: 50 }, (_, i) => ({ topic, event: `n-${i}`, payload: { i } }));
    assert.equal((await batch(messages)).status, 202);
    for (const i of [50, 51, 52]) assert.equal((await single(topic, `n-${i}`, { body: { i } })).status, 202);
    const got = await sub.inbox.waitForCount(53);
    assert.deepEqual(got.map((m) => m.event), Array.from({ length: 53 }, (_, i) => `n-${i}`));
    assert.deepEqual(got.map((m) => m.payload.i), Array.from({ length: 53 }, (_, i) => i));
  });

  test('an id is delivered as meta.id (v1 and v2); no id, no meta', async () => {
    const topic = uniq('ids');
    const v2 = await join(stack.client(), topic);
    const v1 = await join(stack.client({ vsn: '1.0.0' }), topic);
    const id = randomUUID();
    const res = await batch([
      { topic, event: 'with-id', payload: { k: 'v' }, id: id.toUpperCase() },
      { topic, event: 'no-id', payload: {}, private: false, id: null },
    ]);
    assert.equal(res.status, 202);
    assert.equal(res.text, '');
    for (const h of [v1, v2]) {
      const [a, b] = await h.inbox.waitForCount(2);
      assert.deepEqual(a, { type: 'broadcast', event: 'with-id', payload: { k: 'v' }, meta: { id } });
      assert.deepEqual(b, { type: 'broadcast', event: 'no-id', payload: {} });
    }
  });

  test('private messages: delivered where the INSERT policy allows, skipped silently elsewhere', async () => {
    const open = uniq('room');
    const closed = uniq('room');
    const pub = uniq('pub');
    await addMember(open, 'mixed', true);
    await addMember(closed, 'mixed'); // may read, not write
    const openSub = await privateJoin('mixed', open);
    const closedSub = await privateJoin('mixed', closed);
    const pubSub = await join(stack.client(), pub);
    const res = await batch(
      [
        { topic: pub, event: 'p1', payload: {} },
        { topic: closed, event: 'denied-1', payload: {}, private: true },
        { topic: open, event: 'ok-1', payload: {}, private: true },
        { topic: closed, event: 'denied-2', payload: {}, private: true },
        { topic: open, event: 'ok-2', payload: {}, private: true },
        { topic: pub, event: 'p2', payload: {} },
      ],
      { token: userToken('mixed') },
    );
    assert.equal(res.status, 202);
    const openEnd = await privateBarrier(openSub);
    const closedEnd = await privateBarrier(closedSub);
    const pubEnd = await barrier(stack, pubSub);
    assert.deepEqual(events(openSub), ['ok-1', 'ok-2', openEnd]);
    assert.deepEqual(events(closedSub), [closedEnd]);
    assert.deepEqual(events(pubSub), ['p1', 'p2', pubEnd]);
  });
});

describe('a second sidecar on the same database', () => {
  test('delivers what either sidecar accepted over REST', async () => {
    const extra = await stack.startExtraSidecar();
    try {
      const topic = uniq('multi');
      const onExtra = await join(extra.client(), topic);
      const onMain = await join(stack.client(), topic);
      assert.equal((await batch([{ topic, event: 'via-main', payload: { n: 1 } }])).status, 202);
      assert.equal((await single(topic, 'via-extra', { body: { n: 2 }, base: extra.httpUrl() })).status, 202);
      assert.deepEqual(await (await sender()).channel(topic).httpSend('js-main', { n: 3 }), { success: true });
      for (const h of [onExtra, onMain]) {
        const got = await h.inbox.waitForCount(3);
        assert.deepEqual(got.map((m) => [m.event, m.payload.n]), [['via-main', 1], ['via-extra', 2], ['js-main', 3]]);
      }
    } finally {
      await extra.stop();
    }
  });
});

describe('refusals', () => {
  const message = { topic: 't', event: 'e', payload: {} };

  test('401 without a valid token, on both endpoints and both mount points', async () => {
    const unauthorized = { status: 401, json: { message: 'Unauthorized' } };
    const expired = stack.token({ exp: now() - 10 });
    const noRole = stack.token({ role: null });
    const paths = ['', '/t/events/e'];
    for (const path of paths) {
      const cases = {
        'no token': { token: null },
        'bad token': { token: 'not.a.jwt' },
        'wrong secret': { token: stack.token({}, { secret: 'another-secret-0123456789-0123456789-0123' }) },
        expired: { token: expired },
        'no role': { token: noRole },
        'bad bearer, good apikey': { token: 'nope', headers: { apikey: stack.anonKey } },
      };
      for (const [name, opts] of Object.entries(cases)) {
        const res = await post(path, { body: { messages: [message] }, ...opts });
        assert.deepEqual({ status: res.status, json: res.json }, unauthorized, `${path || 'batch'}: ${name}`);
      }
      // The apikey header alone is enough; the query string's apikey is not a credential.
      const viaApikey = await post(`${path}?apikey=${stack.anonKey}`, {
        body: path ? {} : { messages: [message] },
        token: null,
        headers: { apikey: stack.anonKey },
      });
      assert.equal(viaApikey.status, 202, `${path || 'batch'} with the apikey header`);
      const viaQuery = await post(`${path}?apikey=${stack.anonKey}`, { body: {}, token: null });
      assert.equal(viaQuery.status, 401);
    }
    // Without the /realtime/v1 prefix (a client whose socket URL is /socket/websocket).
    const bare = await fetch(stack.httpUrl('/api/broadcast'), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{}',
    });
    assert.equal(bare.status, 401);
  });

  test('415 for other media types; 413 beyond MAX_FRAME_BYTES; 400 for malformed JSON', async () => {
    for (const type of ['text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x']) {
      const res = await single('t', 'e', { body: 'a=1', headers: { 'content-type': type } });
      assert.deepEqual({ status: res.status, json: res.json }, { status: 415, json: { error: UNSUPPORTED } }, type);
    }
    const batchBinary = await post('', { body: new Uint8Array([1]), headers: { 'content-type': 'application/octet-stream' } });
    assert.deepEqual([batchBinary.status, batchBinary.json], [415, { error: 'Unsupported Media Type. Use application/json' }]);
    // A JSON body without a content type is accepted (fetch sets none for bytes); charset
    // parameters are ignored.
    const topic = uniq('ct');
    const sub = await join(stack.client(), topic);
    assert.equal((await single(topic, 'no-ct', { body: new TextEncoder().encode('{"x":1}'), headers: { 'content-type': null } })).status, 202);
    assert.equal((await single(topic, 'charset', { body: { x: 2 }, headers: { 'content-type': 'application/json; charset=utf-8' } })).status, 202);
    assert.deepEqual((await sub.inbox.waitForCount(2)).map((m) => m.payload.x), [1, 2]);

    const big = await single('t', 'e', { body: new Uint8Array(MAX_FRAME_BYTES + 1), headers: { 'content-type': 'application/octet-stream' } });
    assert.equal(big.status, 413);
    assert.match(big.json?.message ?? '', /exceeds \d+ bytes/);
    const bigBatch = await batch([{ ...message, payload: { s: 'x'.repeat(MAX_FRAME_BYTES) } }]);
    assert.equal(bigBatch.status, 413);

    for (const body of ['{"messages": [', 'nope', '{"a":"\\ud800"}']) {
      const res = await single('t', 'e', { body });
      assert.equal(res.status, 400, body);
      assert.match(res.json?.message ?? '', /not valid JSON/, body);
      assert.equal((await post('', { body })).status, 400, body);
    }
  });

  test('422 with changeset-style field errors', async () => {
    const cases = [
      [{}, { messages: ["can't be blank"] }],
      [{ messages: [] }, { messages: ["can't be blank"] }],
      [{ messages: 'x' }, { messages: ['is invalid'] }],
      [{ messages: [1] }, { messages: ['is invalid'] }],
      [
        {
          messages: [
            message,
            { topic: 't', event: 'e' },
            { event: 'e', payload: {} },
            { topic: 't', payload: {} },
            { topic: ' ', event: '', payload: [1] },
            { ...message, payload: 'text' },
            { ...message, id: 'not-a-uuid' },
            { ...message, id: 42, private: 'yes' },
            { ...message, payload: { s: 'nul\u0000' } },
          ],
        },
        {
          messages: [
            {},
            { payload: ["can't be blank"] },
            { topic: ["can't be blank"] },
            { event: ["can't be blank"] },
            { topic: ["can't be blank"], event: ["can't be blank"], payload: ['is invalid'] },
            { payload: ['is invalid'] },
            { id: ['is invalid'] },
            { private: ['is invalid'], id: ['is invalid'] },
            { payload: ['must not contain \\u0000 (PostgreSQL cannot store it)'] },
          ],
        },
      ],
    ];
    for (const [body, errors] of cases) {
      const res = await post('', { body });
      assert.deepEqual({ status: res.status, json: res.json }, { status: 422, json: { errors } }, JSON.stringify(body));
    }
    // Single: path fields and the body, together.
    const blank = await single(' ', '\t', { body: '' });
    assert.deepEqual(blank.json, { errors: { topic: ["can't be blank"], event: ["can't be blank"], payload: ["can't be blank"] } });
    assert.equal(blank.status, 422);
    const nul = await single('t', 'e', { body: { s: '\u0000' } });
    assert.deepEqual([nul.status, Object.keys(nul.json.errors)], [422, ['payload']]);
    const badUtf8 = await fetch(stack.httpUrl('/realtime/v1/api/broadcast/t/events/%FF'), {
      method: 'POST',
      headers: { apikey: stack.anonKey, 'content-type': 'application/json' },
      body: '{}',
    });
    assert.deepEqual([badUtf8.status, await badUtf8.json()], [422, { errors: { event: ['is invalid'] } }]);
    // A batch with one bad message queues nothing.
    const topic = uniq('atomic');
    const sub = await join(stack.client(), topic);
    assert.equal((await batch([{ topic, event: 'good', payload: {} }, { topic, event: 'bad' }])).status, 422);
    const end = await barrier(stack, sub);
    assert.deepEqual(events(sub), [end]);
  });

  test('403 for a private single broadcast without an INSERT policy; the role must exist', async () => {
    const room = uniq('room');
    await addMember(room, 'reader-only');
    const reader = await privateJoin('reader-only', room);
    for (const token of [userToken('reader-only'), userToken('stranger'), stack.anonKey]) {
      const res = await single(room, 'e', { query: '?private=true&vsn=2.0.0', body: {}, token });
      assert.deepEqual({ status: res.status, json: res.json }, { status: 403, json: { message: 'Unauthorized' } });
    }
    const ghost = await single(room, 'e', { query: '?private=true', body: {}, token: userToken('ghost', { role: 'ghost' }) });
    assert.equal(ghost.status, 403);
    assert.match(ghost.json?.message ?? '', /role "ghost"/);
    // Only the literal `true` makes it private: this one is public and reaches nobody here.
    assert.equal((await single(room, 'public', { query: '?private=1', body: {}, token: userToken('reader-only') })).status, 202);
    const end = await privateBarrier(reader);
    assert.deepEqual(events(reader), [end]);
  });

  test('names are values: SQL-looking topics and events are delivered verbatim', async () => {
    const topic = `x'); delete from public.rest_members; --`;
    const sub = await join(stack.client(), topic);
    const event = `"; drop table realtime.messages; --`;
    assert.equal((await single(topic, event, { body: { ok: true } })).status, 202);
    assert.equal((await batch([{ topic, event, payload: { ok: 2 } }])).status, 202);
    assert.deepEqual((await sub.inbox.waitForCount(2)).map((m) => [m.event, m.payload.ok]), [[event, true], [event, 2]]);
    const [{ n }] = await stack.sql('select count(*)::int as n from public.rest_members');
    assert.ok(n > 0);
  });

  test('the server is still healthy after all of the above', async () => {
    await stack.assertHealthy();
  });
});
