// Attack (issue 10, finding 6): a validly signed token that names a superuser or a BYPASSRLS role
// — or one not valid yet (`nbf`) — must be refused wherever the sidecar verifies a token:
// connect, channel join, access_token refresh, REST. Before the fix such a token connected and
// passed every private-channel policy (the policies ran as `postgres`).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startStack, join, uniq, roomPoliciesSql } from '../lib/harness.mjs';
import { RawSocket } from '../lib/raw.mjs';

let stack;
before(async () => {
  stack = await startStack({ name: 'sec-token-role' });
  await stack.sql(`
    ${roomPoliciesSql('sec_members')}
    create role sec_bypass nologin bypassrls;
  `);
  await stack.assertHealthy();
});
after(async () => {
  await stack?.stop();
});

const notAllowed = (role) => `The role "${role}" of the token is not allowed`;
const member = (sub, claims = {}) => stack.token({ role: 'authenticated', sub, ...claims });

async function rest(topic, token) {
  const res = await fetch(stack.httpUrl(`/api/broadcast/${encodeURIComponent(topic)}/events/e?private=true`), {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: '{}',
  });
  const text = await res.text();
  return { status: res.status, json: text ? JSON.parse(text) : null };
}

for (const role of ['postgres', 'sec_bypass']) {
  test(`a signed token for role ${role} is refused at connect, join, refresh and REST`, async () => {
    const evil = stack.token({ role, sub: 'attacker' });

    const refused = await RawSocket.refusal(stack.wsUrl({ apikey: evil }));
    assert.deepEqual({ status: refused.status, json: refused.json }, { status: 403, json: { error: notAllowed(role) } });

    // Join a private room with the token as access_token (connected with the anon key).
    const room = uniq('room');
    const client = stack.client();
    client.setAuth(evil);
    const h = await join(client, room, { config: { private: true }, expect: false });
    const first = await h.statuses.waitFor(() => true, 20000, 'join verdict');
    assert.equal(first.status, 'CHANNEL_ERROR');
    assert.equal(first.err?.message, `Unauthorized: ${notAllowed(role)}`);
    await stack.closeClient(client);

    // Refresh a joined public channel's token to the superuser one: the channel is closed.
    const s = stack.trackRaw(await RawSocket.connect(stack.wsUrl()));
    const topic = `realtime:${uniq('pub')}`;
    const { joinRef, reply } = await s.join(topic);
    assert.equal(reply.payload.status, 'ok');
    s.push(topic, 'access_token', { access_token: evil }, { joinRef });
    const system = await s.frames.waitFor((f) => f.event === 'system' && f.topic === topic);
    assert.equal(system.payload.message, notAllowed(role));
    await s.frames.waitFor((f) => f.event === 'phx_close' && f.topic === topic);
    assert.equal((await s.heartbeat()).payload.status, 'ok', 'the socket stays usable');

    const r = await rest(room, evil);
    assert.deepEqual(r, { status: 403, json: { message: notAllowed(role) } });

    await stack.assertHealthy();
  });
}

test('the refused role cannot read a private room that a member can', async () => {
  const room = uniq('room');
  await stack.sql('insert into public.sec_members (room, user_id, can_write) values ($1, $2, true)', [room, 'alice']);
  const alice = stack.client();
  alice.setAuth(member('alice'));
  const a = await join(alice, room, { config: { private: true, broadcast: { self: true, ack: true } } });

  const spy = stack.client();
  spy.setAuth(stack.token({ role: 'postgres', sub: 'alice' }));
  const s = await join(spy, room, { config: { private: true }, expect: false });
  assert.equal((await s.statuses.waitFor(() => true, 20000)).status, 'CHANNEL_ERROR');

  assert.equal(await a.ch.send({ type: 'broadcast', event: 'secret', payload: { n: 1 } }), 'ok');
  await a.inbox.waitFor((m) => m.event === 'secret');
  assert.equal(s.inbox.count(), 0, 'nothing reached the refused token');
  await stack.closeClient(alice);
  await stack.closeClient(spy);
});

test('nbf: a token not valid yet is refused; a few seconds of clock skew are tolerated', async () => {
  const now = Math.floor(Date.now() / 1000);
  const later = stack.token({ nbf: now + 3600 });
  const refused = await RawSocket.refusal(stack.wsUrl({ apikey: later }));
  assert.deepEqual({ status: refused.status, json: refused.json }, { status: 401, json: { error: 'Token is not valid yet' } });
  assert.equal((await rest(uniq('room'), later)).status, 401);

  const skewed = stack.token({ nbf: now + 5 });
  const s = stack.trackRaw(await RawSocket.connect(stack.wsUrl({ apikey: skewed })));
  assert.equal((await s.heartbeat()).payload.status, 'ok');
  await stack.assertHealthy();
});

test('the allowed roles still work: anon, authenticated, service_role', async () => {
  for (const role of ['anon', 'authenticated', 'service_role']) {
    const s = stack.trackRaw(await RawSocket.connect(stack.wsUrl({ apikey: stack.token({ role, sub: 'u' }) })));
    const { reply } = await s.join(`realtime:${uniq(role)}`);
    assert.equal(reply.payload.status, 'ok', role);
  }
});
