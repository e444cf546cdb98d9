// Attack (issue 10, finding 8): one NUL byte must not drop other users' messages. A client's
// broadcast or presence is written to Postgres in a batch shared with everyone else's (so the
// other sidecars deliver it); a `\u0000` (which jsonb and text cannot store) used to fail the
// whole batch, which was retried for 5 s and dropped. Now such input is refused where it enters
// (socket: v1 and v2 JSON, v2 binary; REST: 422, no longer 500), and a batch the database refuses
// for any other reason is written again message by message, losing only the refused one.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startStack, join, uniq, delay } from '../lib/harness.mjs';
import { RawSocket, encodeKind3 } from '../lib/raw.mjs';

const UNSTORABLE = 'The message contains \\u0000 or a number out of range, which PostgreSQL cannot store';
const FIELD_NUL = 'must not contain \\u0000 (PostgreSQL cannot store it)';

let stack;
let other; // a second sidecar on the same database
before(async () => {
  stack = await startStack({ name: 'sec-nul' });
  other = await stack.startExtraSidecar();
  await stack.assertHealthy();
});
after(async () => {
  await stack?.stop();
});

/** A raw socket on the main sidecar joined to `topic` with broadcast ack. */
async function attacker(vsn, topic) {
  const s = stack.trackRaw(await RawSocket.connect(stack.wsUrl({ vsn }), { vsn }));
  const config = { broadcast: { ack: true, self: false }, presence: { enabled: false, key: '' }, postgres_changes: [], private: false };
  const { joinRef, reply } = await s.join(topic, { config });
  assert.equal(reply.payload.status, 'ok');
  return { s, joinRef };
}

/** The victim: a sender on the main sidecar and a receiver on the other one, same room. */
async function victims(room) {
  const receiverClient = other.client();
  const receiver = await join(receiverClient, room);
  const senderClient = stack.client();
  const sender = await join(senderClient, room, { config: { broadcast: { ack: true } } });
  return { sender, receiver, close: () => Promise.all([stack.closeClient(senderClient), stack.closeClient(receiverClient)]) };
}

test('NUL in payloads, events, topics and presence is refused at the socket; another user loses nothing', async () => {
  const room = uniq('room');
  const topic = `realtime:${room}`;
  const v = await victims(room);
  const v1 = await attacker('1.0.0', topic);
  const v2 = await attacker('2.0.0', topic);

  const attacks = [
    // v1 JSON push, NUL in the payload
    () => v1.s.push(topic, 'broadcast', { type: 'broadcast', event: 'evil', payload: { s: 'a\u0000b' } }, { joinRef: v1.joinRef }),
    // v2 JSON push, NUL in a key
    () => v2.s.push(topic, 'broadcast', { type: 'broadcast', event: 'evil', payload: { 'k\u0000': 1 } }, { joinRef: v2.joinRef }),
    // v2 JSON push, NUL in the event
    () => v2.s.push(topic, 'broadcast', { type: 'broadcast', event: 'ev\u0000il', payload: {} }, { joinRef: v2.joinRef }),
    // v2 binary kind 3 (what realtime-js sends), NUL in the payload and in the event
    () => {
      const ref = v2.s.nextRef();
      v2.s.sendRaw(encodeKind3({ joinRef: v2.joinRef, ref, topic, event: 'evil', payload: { s: '\u0000' } }), { binary: true });
      return ref;
    },
    () => {
      const ref = v2.s.nextRef();
      v2.s.sendRaw(encodeKind3({ joinRef: v2.joinRef, ref, topic, event: 'e\u0000', payload: {} }), { binary: true });
      return ref;
    },
    // presence track with NUL in the meta
    () => v2.s.push(topic, 'presence', { type: 'presence', event: 'track', payload: { name: '\u0000' } }, { joinRef: v2.joinRef }),
  ];

  const sent = [];
  const refusals = [];
  for (let i = 0; i < 24; i++) {
    sent.push(v.sender.ch.send({ type: 'broadcast', event: 'victim', payload: { i } }));
    const attack = attacks[i % attacks.length];
    const sock = i % attacks.length === 0 ? v1.s : v2.s;
    refusals.push(sock.reply(attack()));
  }
  assert.deepEqual(await Promise.all(sent), Array(24).fill('ok'));
  // First what matters most: the other user lost nothing.
  const got = await v.receiver.inbox.waitForCount(24, (m) => m.event === 'victim', 15000, 'victim broadcasts on the other sidecar');
  assert.deepEqual(got.map((m) => m.payload.i), [...Array(24).keys()]);
  for (const reply of await Promise.all(refusals)) {
    assert.deepEqual(reply.payload, { status: 'error', response: { reason: UNSTORABLE } });
  }
  assert.equal(v.receiver.inbox.count((m) => m.event !== 'victim'), 0, 'no attacker message was delivered');

  // The official client's own NUL payload is refused too (ack: error).
  assert.equal(await v.sender.ch.send({ type: 'broadcast', event: 'x', payload: { s: '\u0000' } }), 'error');

  // A NUL topic cannot be joined.
  const { reply } = await v2.s.join('realtime:a\u0000b');
  assert.deepEqual(reply.payload, { status: 'error', response: { reason: 'InvalidTopicName: The topic must not contain \\u0000' } });
  assert.equal((await v2.s.heartbeat()).payload.status, 'ok', 'the attacker socket is still served');
  await v.close();
  await stack.assertHealthy();
});

test('REST: NUL in topic, event or payload is a 422 naming the field, not a 500', async () => {
  const auth = { authorization: `Bearer ${stack.anonKey}`, 'content-type': 'application/json' };
  const post = async (path, body) => {
    const res = await fetch(stack.httpUrl(path), { method: 'POST', headers: auth, body: JSON.stringify(body) });
    return { status: res.status, json: await res.json().catch(() => null) };
  };
  assert.deepEqual(await post('/api/broadcast/a%00b/events/e', {}), { status: 422, json: { errors: { topic: [FIELD_NUL] } } });
  assert.deepEqual(await post('/api/broadcast/room/events/e%00', {}), { status: 422, json: { errors: { event: [FIELD_NUL] } } });
  assert.deepEqual(await post('/api/broadcast/room/events/e', { s: '\u0000' }), { status: 422, json: { errors: { payload: [FIELD_NUL] } } });
  const batch = await post('/api/broadcast', {
    messages: [
      { topic: 'ok', event: 'e', payload: {} },
      { topic: 'a\u0000', event: 'e\u0000', payload: { k: '\u0000' } },
    ],
  });
  assert.deepEqual(batch, {
    status: 422,
    json: { errors: { messages: [{}, { topic: [FIELD_NUL], event: [FIELD_NUL], payload: [FIELD_NUL] }] } },
  });
  await stack.assertHealthy();
});

test('a batch the database refuses loses only the refused message: 24 of 24 arrive on the other sidecar', async () => {
  // Make the database refuse one specific message (a presence whose key is 'poison'), and hold
  // the publisher on a lock so that the victim's messages and the poison share one batch.
  await stack.sql(`alter table realtime.presence_entries add constraint sec_poison check (key <> 'poison')`);
  try {
    const room = uniq('room');
    const topic = `realtime:${room}`;
    const v = await victims(room);
    const presence = (key) => ({ broadcast: { ack: true }, presence: { enabled: true, key }, postgres_changes: [], private: false });
    const blocker = stack.trackRaw(await RawSocket.connect(stack.wsUrl()));
    const b = await blocker.join(topic, { config: presence('blocker') });
    const poisoner = stack.trackRaw(await RawSocket.connect(stack.wsUrl()));
    const p = await poisoner.join(topic, { config: presence('poison') });

    const lock = await stack.session();
    await lock.query('begin');
    await lock.query('lock table realtime.presence_entries in access exclusive mode');
    try {
      const track = (s, joinRef) => s.reply(s.push(topic, 'presence', { type: 'presence', event: 'track', payload: {} }, { joinRef }));
      assert.equal((await track(blocker, b.joinRef)).payload.status, 'ok');
      await delay(200); // the publisher is now waiting on the lock with the blocker's presence
      const sent = [];
      for (let i = 0; i < 12; i++) sent.push(v.sender.ch.send({ type: 'broadcast', event: 'victim', payload: { i } }));
      const poisoned = track(poisoner, p.joinRef);
      for (let i = 12; i < 24; i++) sent.push(v.sender.ch.send({ type: 'broadcast', event: 'victim', payload: { i } }));
      assert.deepEqual(await Promise.all(sent), Array(24).fill('ok'));
      assert.equal((await poisoned).payload.status, 'ok', 'accepted here; only the database refuses it');
    } finally {
      await lock.query('commit');
    }
    const got = await v.receiver.inbox.waitForCount(24, (m) => m.event === 'victim', 15000, 'victim broadcasts after the refused batch');
    assert.deepEqual(got.map((m) => m.payload.i), [...Array(24).keys()]);
    const log = stack.tail('sidecar.log', 400);
    // The poison shared a batch with the victim's messages (else this test would prove nothing).
    const batch = log.match(/the database refused a batch; writing its messages one by one.*messages=(\d+)/);
    assert.ok(batch && Number(batch[1]) > 1, 'the refused batch held other messages');
    assert.match(log, /the database refused a message; dropped/);
    await v.close();
  } finally {
    await stack.sql('alter table realtime.presence_entries drop constraint sec_poison');
  }
  await stack.assertHealthy();
});
