// Authorization: JWT algorithms through a JWKS, private channels decided by realtime.messages
// policies, token refresh and expiry. realtime-js and raw sockets; after the hostile cases the
// stack's canary must still be served. The leak checks assert exact inboxes: nobody receives a
// message their policy hides.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startStack, join, uniq, delay, roomPoliciesSql } from './lib/harness.mjs';
import { RawSocket } from './lib/raw.mjs';
import { eventually } from './lib/util.mjs';
import { makeKeys } from './lib/jwks.mjs';

const RECHECK_SECS = 2;
const keys = makeKeys();
let stack;

const now = () => Math.floor(Date.now() / 1000);
/** A user token (HS256 with the stack secret unless `alg` says otherwise). */
function userToken(sub, { role = 'authenticated', alg = 'HS256', expiresIn = 3600, ...claims } = {}) {
  const body = { sub, role, iat: now(), exp: now() + expiresIn, ...claims };
  return alg === 'HS256' ? stack.token({ ...body, expiresIn }) : keys.sign(alg, body);
}

before(async () => {
  stack = await startStack({
    name: 'auth',
    sidecarEnv: { JWT_JWKS: keys.jwks, POLICY_RECHECK_SECS: String(RECHECK_SECS) },
  });
  await stack.sql(roomPoliciesSql('room_members', { readExtensions: ['broadcast', 'presence'] }));
  await stack.sql(`
    create policy "lobby presence" on realtime.messages for select to authenticated
      using (realtime.topic() like 'lobby-%' and realtime.messages.extension = 'presence');
  `);
  await stack.assertHealthy();
});
after(async () => {
  await stack?.stop();
});

async function addMember(room, user, canWrite = false) {
  await stack.sql('insert into public.room_members values ($1, $2, $3)', [room, user, canWrite]);
}

/** A realtime-js client connected with `sub`'s token, joined to private `room`. */
async function privateJoin(sub, room, { expect = true, config = {}, token } = {}) {
  const accessToken = token ?? userToken(sub);
  const client = stack.client({ apikey: stack.anonKey });
  client.setAuth(accessToken);
  const handle = await join(client, room, { config: { private: true, broadcast: { ack: true }, ...config }, expect });
  return { ...handle, token: accessToken };
}

async function firstStatus(handle) {
  return handle.statuses.waitFor(() => true, 20000, `first status of ${handle.topic}`);
}

function sendPrivate(room, event, payload) {
  return stack.sql('select realtime.send($1::jsonb, $2, $3)', [JSON.stringify(payload), event, room]);
}

async function raw(apikey) {
  return stack.trackRaw(await RawSocket.connect(stack.wsUrl({ apikey })));
}

describe('JWT verification', () => {
  const algs = ['RS256', 'RS384', 'RS512', 'ES256', 'ES384', 'ES512', 'EdDSA'];
  for (const alg of algs) {
    test(`${alg} token from the JWKS: connects, joins, receives`, async () => {
      const key = keys.sign(alg, { role: 'anon', exp: now() + 600, iat: now() });
      const client = stack.client({ apikey: key });
      const topic = uniq(`jwks-${alg}`);
      const h = await join(client, topic);
      await stack.broadcast(topic, 'hello', { alg });
      const m = await h.inbox.waitFor((x) => x.event === 'hello');
      assert.equal(m.payload.alg, alg);
    });
  }

  const badKeys = () => {
    const exp = now() + 600;
    const claims = { role: 'anon', exp };
    const [h, b] = keys.sign('RS256', claims).split('.');
    return {
      // Realtime has no signer for an unknown algorithm, `none` included.
      'alg none': [keys.sign('none', claims), null, 'JwtSignerError'],
      // Algorithm confusion: HS256 keyed with the RSA public key (PEM) under the RSA key's kid.
      'HS256 keyed with the RSA public key': [
        keys.sign('HS256', claims, { secret: keys.publicPem('RS256'), kid: keys.kid('RS256') }),
        'Failed to validate JWT signature',
        'JwtSignatureError',
      ],
      'unknown kid': [keys.sign('RS256', claims, { kid: 'no-such-kid' }), null, 'JwtSignerError'],
      'bad signature': [`${h}.${b}.${keys.sign('RS256', { ...claims, exp: exp + 1 }).split('.')[2]}`,
        'Failed to validate JWT signature', 'JwtSignatureError'],
      'expired RS256': [keys.sign('RS256', { role: 'anon', exp: now() - 10 }), 'Token has expired', 'InvalidJWTToken'],
    };
  };

  test('bad tokens are refused at connect with 401 and Realtime messages', async () => {
    for (const [name, [key, message]] of Object.entries(badKeys())) {
      const r = await RawSocket.refusal(stack.wsUrl({ apikey: key }));
      assert.equal(r.status, 401, name);
      if (message) assert.equal(r.json?.error, message, name);
      else assert.match(r.json?.error ?? '', /^Failed to generate JWT signer/, name);
    }
    await stack.assertHealthy();
  });

  test('bad tokens are refused at join with the reason codes of §3.5', async () => {
    const s = await raw(stack.anonKey);
    for (const [name, [key, , code]] of Object.entries(badKeys())) {
      const { reply } = await s.join(`realtime:${uniq('badjoin')}`, { extra: { access_token: key } });
      assert.equal(reply.payload.status, 'error', name);
      assert.ok(reply.payload.response.reason.startsWith(`${code}: `), `${name}: ${reply.payload.response.reason}`);
    }
    await stack.assertHealthy();
  });
});

describe('private channels', () => {
  test('no policy for the user: Unauthorized, with Supabase reason', async () => {
    const room = uniq('room');
    const h = await privateJoin('mallory', room, { expect: false });
    const st = await firstStatus(h);
    assert.equal(st.status, 'CHANNEL_ERROR');
    assert.equal(st.err?.message, `Unauthorized: You do not have permissions to read from this Channel topic: ${room}`);
    await stack.closeClient(h.client);
  });

  test('read-only member receives but cannot send; a writer can; outsiders see nothing', async () => {
    const room = uniq('room');
    await addMember(room, 'reader');
    await addMember(room, 'writer', true);
    const reader = await privateJoin('reader', room);
    const writer = await privateJoin('writer', room);
    const outsider = await privateJoin('outsider', room, { expect: false });
    assert.equal((await firstStatus(outsider)).status, 'CHANNEL_ERROR');
    const publicSame = await join(stack.client(), room); // public channel with the same name

    await sendPrivate(room, 'db', { n: 1 });
    for (const h of [reader, writer]) assert.equal((await h.inbox.waitFor((m) => m.event === 'db')).payload.n, 1);

    assert.equal(await reader.ch.send({ type: 'broadcast', event: 'from-reader', payload: {} }), 'error');
    assert.equal(await writer.ch.send({ type: 'broadcast', event: 'from-writer', payload: { w: 1 } }), 'ok');
    await reader.inbox.waitFor((m) => m.event === 'from-writer');

    // Barrier, then exact inboxes: the reader's send reached nobody; the public channel got none.
    await sendPrivate(room, 'end', {});
    await writer.inbox.waitFor((m) => m.event === 'end');
    await reader.inbox.waitFor((m) => m.event === 'end');
    await stack.broadcast(room, 'public-end', {});
    await publicSame.inbox.waitFor((m) => m.event === 'public-end');
    assert.deepEqual(writer.inbox.items.map((m) => m.event), ['db', 'end']);
    assert.deepEqual(reader.inbox.items.map((m) => m.event), ['db', 'from-writer', 'end']);
    assert.deepEqual(publicSame.inbox.items.map((m) => m.event), ['public-end']);
    assert.equal(outsider.inbox.items.length, 0);
  });

  test('a denied send without ack is dropped silently', async () => {
    const room = uniq('room');
    await addMember(room, 'quiet');
    await addMember(room, 'listener');
    const quiet = await privateJoin('quiet', room, { config: { broadcast: { ack: false, self: true } } });
    const listener = await privateJoin('listener', room);
    assert.equal(await quiet.ch.send({ type: 'broadcast', event: 'nope', payload: {} }), 'ok'); // resolves without ack
    await sendPrivate(room, 'end', {});
    await listener.inbox.waitFor((m) => m.event === 'end');
    await quiet.inbox.waitFor((m) => m.event === 'end');
    assert.deepEqual(listener.inbox.items.map((m) => m.event), ['end']);
    assert.deepEqual(quiet.inbox.items.map((m) => m.event), ['end']);
  });

  test('presence-only read: joins, gets presence_state, receives no broadcasts', async () => {
    const lobby = uniq('lobby-');
    const s = await raw(stack.anonKey);
    const topic = `realtime:${lobby}`;
    const { joinRef, reply } = await s.join(topic, {
      config: { private: true, presence: { enabled: true, key: '' }, broadcast: { self: false, ack: false } },
      extra: { access_token: userToken('visitor') },
    });
    assert.equal(reply.payload.status, 'ok', JSON.stringify(reply.payload));
    await s.frames.waitFor((f) => f.event === 'presence_state' && f.topic === topic);
    // Without presence enabled the same user may not join: only broadcast read would count.
    const other = `realtime:${uniq('lobby-')}`;
    const denied = await s.join(other, { config: { private: true }, extra: { access_token: userToken('visitor') } });
    assert.equal(denied.reply.payload.status, 'error');
    await sendPrivate(lobby, 'hidden', {});
    await delay(500);
    assert.equal(s.frames.count((f) => f.event === 'broadcast'), 0);
    assert.ok(joinRef);
  });

  test('a member with broadcast read but presence disabled gets no presence_state', async () => {
    const room = uniq('room');
    await addMember(room, 'nopres');
    const s = await raw(stack.anonKey);
    const topic = `realtime:${room}`;
    const { reply } = await s.join(topic, { config: { private: true }, extra: { access_token: userToken('nopres') } });
    assert.equal(reply.payload.status, 'ok');
    await sendPrivate(room, 'seen', {});
    await s.frames.waitFor((f) => f.event === 'broadcast');
    assert.equal(s.frames.count((f) => f.event === 'presence_state'), 0);
  });

  test('service_role (BYPASSRLS) joins and sends on any private channel', async () => {
    const room = uniq('room');
    await addMember(room, 'member');
    const member = await privateJoin('member', room);
    const admin = await privateJoin('svc', room, { token: userToken('svc', { role: 'service_role' }) });
    assert.equal(await admin.ch.send({ type: 'broadcast', event: 'from-admin', payload: {} }), 'ok');
    await member.inbox.waitFor((m) => m.event === 'from-admin');
  });

  test('a token role that is not a database role: a clear join error, server unaffected', async () => {
    const room = uniq('room');
    const h = await privateJoin('ghost', room, { expect: false, token: userToken('ghost', { role: 'ghost' }) });
    const st = await firstStatus(h);
    assert.equal(st.status, 'CHANNEL_ERROR');
    assert.match(st.err?.message ?? '', /role "ghost"/);
    await stack.closeClient(h.client);
    await stack.assertHealthy();
  });

  test('claims from a JWKS-signed token reach the policies', async () => {
    const room = uniq('room');
    await addMember(room, 'es-user');
    const h = await privateJoin('es-user', room, { token: userToken('es-user', { alg: 'ES256' }) });
    await sendPrivate(room, 'ok', {});
    await h.inbox.waitFor((m) => m.event === 'ok');
  });

  test('topic names are values: a SQL-looking topic is just a topic', async () => {
    const room = `x'); delete from public.room_members; --`;
    const h = await privateJoin('anyone', room, { expect: false });
    assert.equal((await firstStatus(h)).status, 'CHANNEL_ERROR');
    const [{ n }] = await stack.sql('select count(*)::int as n from public.room_members');
    assert.ok(n > 0);
    await stack.closeClient(h.client);
  });
});

describe('token lifecycle', () => {
  test('refresh grants write access, then revokes read access with Supabase message', async () => {
    const room = uniq('room');
    await addMember(room, 'bob');
    await addMember(room, 'alice', true);
    const watcher = await privateJoin('alice', room);
    const h = await privateJoin('bob', room);
    const system = [];
    h.ch.on('system', {}, (m) => system.push(m));
    assert.equal(await h.ch.send({ type: 'broadcast', event: 'before', payload: {} }), 'error');

    await h.client.setAuth(userToken('alice'));
    await eventually(async () => (await h.ch.send({ type: 'broadcast', event: 'granted', payload: {} })) === 'ok',
      { label: 'write access after refresh' });
    await watcher.inbox.waitFor((m) => m.event === 'granted');

    await h.client.setAuth(userToken('carol'));
    const closed = await h.statuses.waitFor((s) => s.status === 'CLOSED', 15000, 'channel closed after revocation');
    assert.ok(closed);
    assert.deepEqual(system.at(-1), {
      extension: 'system', status: 'error', channel: room,
      message: `You no longer have permission to read from this Channel topic: ${room}`,
    });
    await sendPrivate(room, 'after', {});
    await watcher.inbox.waitFor((m) => m.event === 'after');
    assert.equal(h.inbox.count((m) => m.event === 'after'), 0);
  });

  test('a policy change takes effect at the periodic re-check, without a refresh', async () => {
    const room = uniq('room');
    await addMember(room, 'dave');
    const h = await privateJoin('dave', room);
    const system = [];
    h.ch.on('system', {}, (m) => system.push(m));
    await stack.sql('delete from public.room_members where room = $1', [room]);
    await h.statuses.waitFor((s) => s.status === 'CLOSED', (RECHECK_SECS + 10) * 1000, 'closed by re-check');
    assert.equal(system.at(-1)?.message, `You no longer have permission to read from this Channel topic: ${room}`);
  });

  test('expiry while joined closes a private channel with the §7.2 frames', async () => {
    const room = uniq('room');
    await addMember(room, 'erin');
    const s = await raw(stack.anonKey);
    const topic = `realtime:${room}`;
    const { joinRef, reply } = await s.join(topic, {
      config: { private: true }, extra: { access_token: userToken('erin', { expiresIn: 2 }) },
    });
    assert.equal(reply.payload.status, 'ok');
    const sys = await s.frames.waitFor((f) => f.event === 'system' && f.topic === topic, 10000);
    assert.equal(sys.join_ref, joinRef);
    assert.equal(sys.payload.extension, 'system');
    assert.match(sys.payload.message, /^Token has expired \d+ seconds ago$/);
    const close = await s.frames.waitFor((f) => f.event === 'phx_close' && f.topic === topic);
    assert.equal(close.ref, joinRef);
    await sendPrivate(room, 'late', {});
    await delay(300);
    assert.equal(s.frames.count((f) => f.event === 'broadcast'), 0);
  });
});

describe('no leaks', () => {
  test('many users, many rooms: each inbox holds exactly its rooms\' messages', async () => {
    const rooms = [uniq('leak'), uniq('leak'), uniq('leak')];
    const users = ['u1', 'u2', 'u3', 'u4'];
    // u1: all rooms, u2: room 0, u3: room 1 and 2, u4: none.
    const membership = { u1: [0, 1, 2], u2: [0], u3: [1, 2], u4: [] };
    for (const u of users) for (const r of membership[u]) await addMember(rooms[r], u);
    const handles = [];
    for (const u of users) {
      for (let r = 0; r < rooms.length; r += 1) {
        const h = await privateJoin(u, rooms[r], { expect: false });
        handles.push({ u, r, h });
      }
    }
    for (const { u, r, h } of handles) {
      const st = await firstStatus(h);
      assert.equal(st.status, membership[u].includes(r) ? 'SUBSCRIBED' : 'CHANNEL_ERROR', `${u} in room ${r}`);
    }
    for (let i = 0; i < 5; i += 1) for (let r = 0; r < rooms.length; r += 1) await sendPrivate(rooms[r], `m${r}`, { i });
    for (let r = 0; r < rooms.length; r += 1) await sendPrivate(rooms[r], 'end', {});
    for (const { u, r, h } of handles) {
      if (!membership[u].includes(r)) continue;
      await h.inbox.waitFor((m) => m.event === 'end');
    }
    await delay(200);
    for (const { u, r, h } of handles) {
      const expected = membership[u].includes(r) ? [...Array(5).fill(`m${r}`), 'end'] : [];
      assert.deepEqual(h.inbox.items.map((m) => m.event), expected, `${u} in room ${r}`);
    }
  });
});
