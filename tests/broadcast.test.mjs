// SQL → sidecar → @supabase/realtime-js delivery semantics, for vsn 1.0.0 and 2.0.0:
// exact payloads, realtime.send ids, private/public separation, transactional delivery
// (rollback, savepoints, commit order), large payloads, heartbeats, client broadcasts.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startStack, join, barrier, uniq } from './lib/harness.mjs';

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const VSNS = ['1.0.0', '2.0.0'];

let stack;
before(async () => {
  stack = await startStack({ name: 'broadcast' });
});
after(async () => {
  await stack?.stop();
});

/** A ~`bytes` long string mixing ASCII, JSON escapes and multi-byte UTF-8 (no NUL: jsonb rejects it). */
function bigString(bytes) {
  const chunk = 'The quick brown fox "jumps" over the \\lazy\\ dog.\n\tnaïve café – 日本語 😀 ';
  const chunkBytes = Buffer.byteLength(chunk);
  let s = '';
  for (let i = 0; Buffer.byteLength(s) + chunkBytes <= bytes; i++) s += `${i}:${chunk}`;
  return s;
}

const events = (h, pred = () => true) => h.inbox.items.filter(pred).map((m) => m.event);

for (const vsn of VSNS) {
  describe(`vsn ${vsn}`, () => {
    let client;
    before(() => {
      client = stack.client({ vsn });
    });
    after(async () => {
      await stack.closeClient(client);
    });

    test('join → SUBSCRIBED; SQL realtime.broadcast arrives with exact event/payload; leave → CLOSED', async () => {
      const topic = uniq('basic');
      const h = await join(client, topic);
      const payload = {
        hello: 'world',
        n: 42,
        neg: -7.25,
        big: 9007199254740991,
        nested: { arr: [1, 'two', null, true, { deep: [] }], empty: {} },
        unicode: 'héllo ✓ 😀 "quoted" \\ back',
      };
      await stack.broadcast(topic, 'greeting', payload);
      const m = await h.inbox.waitFor((x) => x.event === 'greeting');
      assert.equal(m.type, 'broadcast');
      assert.equal(m.event, 'greeting');
      assert.deepEqual(m.payload, payload);
      // an event name with mixed case and punctuation is passed through verbatim
      await stack.broadcast(topic, 'Mixed.Case:evt-1', { k: 'v' });
      const m2 = await h.inbox.waitFor((x) => x.event === 'Mixed.Case:evt-1');
      assert.deepEqual(m2.payload, { k: 'v' });
      assert.deepEqual(events(h), ['greeting', 'Mixed.Case:evt-1']);

      assert.equal(await client.removeChannel(h.ch), 'ok');
      await h.statuses.waitFor((s) => s.status === 'CLOSED');
      assert.deepEqual(
        h.statuses.items.map((s) => s.status),
        ['SUBSCRIBED', 'CLOSED'],
      );
    });

    test('a broadcast reaches only subscribers of its topic', async () => {
      const t1 = uniq('iso');
      const t2 = uniq('iso');
      const h1 = await join(client, t1);
      const h2 = await join(client, t2);
      await stack.broadcast(t1, 'only-t1', { to: 1 });
      await stack.broadcast(t2, 'only-t2', { to: 2 });
      await barrier(stack, h1);
      await barrier(stack, h2);
      assert.deepEqual(events(h1, (m) => m.event.startsWith('only-')), ['only-t1']);
      assert.deepEqual(events(h2, (m) => m.event.startsWith('only-')), ['only-t2']);
      await client.removeChannel(h1.ch);
      await client.removeChannel(h2.ch);
    });

    test('realtime.send(..., private => false): payload.id equals meta.id', async () => {
      const topic = uniq('send');
      const h = await join(client, topic);
      await stack.sql("select realtime.send($1::jsonb, 'sent', $2, false)", [JSON.stringify({ a: 1, s: 'x' }), topic]);
      const m = await h.inbox.waitFor((x) => x.event === 'sent');
      const { id, ...rest } = m.payload;
      assert.match(id, UUID_RE);
      assert.deepEqual(rest, { a: 1, s: 'x' });
      assert.deepEqual(m.meta, { id });

      // a payload that already has an id keeps it; meta.id is still the message uuid
      await stack.sql("select realtime.send($1::jsonb, 'sent-own-id', $2, false)", [JSON.stringify({ id: 'mine', b: 2 }), topic]);
      const m2 = await h.inbox.waitFor((x) => x.event === 'sent-own-id');
      assert.deepEqual(m2.payload, { id: 'mine', b: 2 });
      assert.match(m2.meta?.id ?? '', UUID_RE);
      assert.notEqual(m2.meta.id, id);
      await client.removeChannel(h.ch);
    });

    test('INSERT INTO realtime.messages broadcasts its broadcast rows with meta.id = the row id, in order', async () => {
      const topic = uniq('msgs');
      const h = await join(client, topic);
      const [{ id }] = await stack.sql(
        `insert into realtime.messages (topic, extension, event, payload, private) values
           ($1, 'broadcast', 'row-1', '{"n":1}', false),
           ($1, 'presence', 'not-a-broadcast', '{}', false),
           ($1, 'broadcast', 'row-2', '{"n":2}', false)
         returning id`, [topic]);
      await stack.sql("insert into realtime.messages (topic, extension, event, payload, private) values ($1, 'broadcast', 'private-row', '{}', true)", [topic]);
      await barrier(stack, h);
      assert.deepEqual(events(h, (m) => !m.event.startsWith('barrier')), ['row-1', 'row-2']);
      const first = h.inbox.items.find((m) => m.event === 'row-1');
      assert.deepEqual(first.payload, { n: 1 });
      assert.deepEqual(first.meta, { id });
      const [{ n }] = await stack.sql('select count(*)::int as n from realtime.messages');
      assert.equal(n, 0);
      await client.removeChannel(h.ch);
    });

    test('private messages (realtime.send default, realtime.broadcast private) do not reach a public subscriber', async () => {
      const topic = uniq('priv');
      const h = await join(client, topic);
      await stack.sql("select realtime.send('{\"secret\":1}'::jsonb, 'secret-send', $1)", [topic]);
      await stack.sql("select realtime.send('{\"secret\":2}'::jsonb, 'secret-send-explicit', $1, true)", [topic]);
      await stack.broadcast(topic, 'secret-broadcast', { secret: 3 }, true);
      await stack.broadcast(topic, 'public-after', { ok: true }, false);
      await barrier(stack, h);
      assert.deepEqual(events(h, (m) => !m.event.startsWith('barrier')), ['public-after']);
      await client.removeChannel(h.ch);
    });

    test('rollback delivers nothing; ROLLBACK TO SAVEPOINT drops only that part', async () => {
      const topic = uniq('tx');
      const h = await join(client, topic);
      const s = await stack.session();
      const bc = (ev) => s.query('select realtime.broadcast($1, $2, $3::jsonb)', [topic, ev, JSON.stringify({ ev })]);
      // 1. plain rollback
      await s.query('begin');
      await bc('rolled-back');
      await s.query('rollback');
      // 2. savepoints
      await s.query('begin');
      await bc('sp-1');
      await s.query('savepoint a');
      await bc('sp-2-dropped');
      await s.query('savepoint a2');
      await bc('sp-3-dropped');
      await s.query('rollback to savepoint a');
      await bc('sp-4');
      await s.query('savepoint b');
      await bc('sp-5');
      await s.query('release savepoint b');
      await s.query('commit');
      // 3. a transaction that fails is rolled back at COMMIT
      await s.query('begin');
      await bc('failed-tx');
      await assert.rejects(s.query('select 1/0'));
      await s.query('commit');
      // 4. an exception block (subtransaction aborted by an error)
      await s.query(`do $$ begin
          perform realtime.broadcast('${topic}', 'exc-kept', '{"ev":"exc-kept"}'::jsonb);
          begin
            perform realtime.broadcast('${topic}', 'exc-dropped', '{"ev":"exc-dropped"}'::jsonb);
            raise exception 'boom';
          exception when others then null;
          end;
        end $$`);
      await barrier(stack, h);
      assert.deepEqual(events(h, (m) => !m.event.startsWith('barrier')), ['sp-1', 'sp-4', 'sp-5', 'exc-kept']);
      for (const m of h.inbox.items.filter((x) => !x.event.startsWith('barrier'))) assert.deepEqual(m.payload, { ev: m.event });
      await client.removeChannel(h.ch);
    });

    test('a 200 KB payload arrives intact', async () => {
      const topic = uniq('big');
      const h = await join(client, topic);
      const blob = bigString(200 * 1024);
      assert.ok(Buffer.byteLength(blob) > 199 * 1024);
      const payload = { blob, n: 7, list: Array.from({ length: 500 }, (_, i) => i * 3) };
      await stack.broadcast(topic, 'big', payload);
      const m = await h.inbox.waitFor((x) => x.event === 'big', 20000);
      assert.equal(m.payload.blob.length, blob.length);
      assert.ok(m.payload.blob === blob, 'blob differs');
      assert.deepEqual(m.payload, payload);
      await client.removeChannel(h.ch);
    });

    test('two concurrent writers: delivered in commit order (B before A)', async () => {
      const topic = uniq('order');
      const h = await join(client, topic);
      const A = await stack.session();
      const B = await stack.session();
      const bc = (s, ev) => s.query('select realtime.broadcast($1, $2, $3::jsonb)', [topic, ev, JSON.stringify({ ev })]);
      await A.query('begin');
      await bc(A, 'from-A');
      await B.query('begin');
      await bc(B, 'from-B');
      await B.query('commit');
      // B is delivered while A is still open: an uncommitted writer does not hold back others
      await h.inbox.waitFor((m) => m.event === 'from-B');
      assert.deepEqual(events(h), ['from-B']);
      await A.query('commit');
      await h.inbox.waitFor((m) => m.event === 'from-A');
      assert.deepEqual(events(h), ['from-B', 'from-A']);

      // interleaved: A1 begins first, B commits, A2 commits, A1 commits last
      const C = await stack.session();
      await A.query('begin');
      await bc(A, 'x-first-begun');
      await B.query('begin');
      await bc(B, 'x-second-begun');
      await C.query('begin');
      await bc(C, 'x-third-begun');
      await C.query('commit');
      await B.query('commit');
      await A.query('commit');
      await barrier(stack, h);
      assert.deepEqual(events(h, (m) => m.event.startsWith('x-')), ['x-third-begun', 'x-second-begun', 'x-first-begun']);
      await client.removeChannel(h.ch);
    });

    test('many messages from one transaction arrive complete and in order', async () => {
      const topic = uniq('many');
      const h = await join(client, topic);
      const N = 300;
      await stack.sql("select realtime.broadcast($1, 'seq', jsonb_build_object('i', i)) from generate_series(1, $2::int) i", [topic, N]);
      // followed by two more multi-message transactions
      const s = await stack.session();
      for (const tx of [1, 2]) {
        await s.query('begin');
        for (let j = 1; j <= 50; j++) {
          await s.query("select realtime.broadcast($1, 'tx', jsonb_build_object('tx', $2::int, 'j', $3::int))", [topic, tx, j]);
        }
        await s.query('commit');
      }
      const got = await h.inbox.waitForCount(N + 100, () => true, 30000);
      assert.deepEqual(
        got.slice(0, N).map((m) => (m.event === 'seq' ? m.payload.i : `${m.event}:${JSON.stringify(m.payload)}`)),
        Array.from({ length: N }, (_, i) => i + 1),
      );
      assert.deepEqual(
        got.slice(N).map((m) => `${m.event}:${m.payload.tx}.${m.payload.j}`),
        [1, 2].flatMap((tx) => Array.from({ length: 50 }, (_, j) => `tx:${tx}.${j + 1}`)),
      );
      await barrier(stack, h);
      assert.equal(h.inbox.count((m) => !m.event.startsWith('barrier')), N + 100, 'no duplicates');
      await client.removeChannel(h.ch);
    });
  });
}

// Both versions run side by side (the interval is also the client's reply deadline, so it is kept
// comfortably above scheduling noise on a loaded 2-core machine).
describe('heartbeat', { concurrency: true }, () => {
  for (const vsn of VSNS) {
    test(`vsn ${vsn}: short heartbeat interval keeps the socket; every heartbeat is answered ok`, async () => {
      const beats = [];
      const client = stack.client({ vsn, heartbeatIntervalMs: 1500, heartbeatCallback: (status) => beats.push(status) });
      try {
        const h = await join(client, uniq('hb'));
        const oks = () => beats.filter((b) => b === 'ok').length;
        // wait (bounded) for 3 acknowledged heartbeats
        const deadline = Date.now() + 30000;
        while (oks() < 3) {
          assert.ok(Date.now() < deadline, `only ${oks()} heartbeat replies in 30 s: ${beats.join(',')}`);
          await new Promise((r) => setTimeout(r, 100));
        }
        assert.deepEqual(
          beats.filter((b) => b !== 'sent' && b !== 'ok'),
          [],
          `unexpected heartbeat statuses: ${beats.join(',')}`,
        );
        assert.ok(client.isConnected(), 'client is connected');
        assert.deepEqual(
          h.statuses.items.map((s) => s.status),
          ['SUBSCRIBED'],
          'the channel never errored / rejoined',
        );
        await stack.broadcast(h.topic, 'after-heartbeats', { ok: 1 });
        const m = await h.inbox.waitFor((x) => x.event === 'after-heartbeats');
        assert.deepEqual(m.payload, { ok: 1 });
      } finally {
        await stack.closeClient(client);
      }
    });
  }
});

describe('client broadcasts (channel.send) across protocol versions', () => {
  for (const senderVsn of VSNS) {
    for (const receiverVsn of VSNS) {
      test(`sender ${senderVsn} → receiver ${receiverVsn}: ack ok, exact payload, self delivery`, async () => {
        const topic = uniq('send');
        const sender = stack.client({ vsn: senderVsn });
        const receiver = stack.client({ vsn: receiverVsn });
        try {
          const hs = await join(sender, topic, { config: { broadcast: { ack: true, self: true } } });
          const hr = await join(receiver, topic);
          const payload = { x: 1, y: [2, 3], s: 'ü 😀' };
          const res = await hs.ch.send({ type: 'broadcast', event: 'cursor', payload });
          assert.equal(res, 'ok');
          const got = await hr.inbox.waitFor((m) => m.event === 'cursor');
          assert.equal(got.type, 'broadcast');
          assert.deepEqual(got.payload, payload);
          const self = await hs.inbox.waitFor((m) => m.event === 'cursor');
          assert.deepEqual(self.payload, payload);
          // self:false (receiver's default) → the receiver does not get its own message back
          assert.equal(await hr.ch.send({ type: 'broadcast', event: 'reply', payload: { r: 1 } }), 'ok');
          const r = await hs.inbox.waitFor((m) => m.event === 'reply');
          assert.deepEqual(r.payload, { r: 1 });
          await barrier(stack, hr);
          assert.deepEqual(events(hr, (m) => !m.event.startsWith('barrier')), ['cursor']);
        } finally {
          await stack.closeClient(sender);
          await stack.closeClient(receiver);
        }
      });
    }
  }
});

test('realtime.send_binary (public): raw bytes to vsn 2.0.0 as an ArrayBuffer with meta.id; dropped for vsn 1.0.0', async () => {
  const topic = uniq('binary');
  const c1 = stack.client({ vsn: '1.0.0' });
  const c2 = stack.client({ vsn: '2.0.0' });
  try {
    const h1 = await join(c1, topic);
    const h2 = await join(c2, topic);
    await stack.sql("select realtime.send_binary('\\x00010203fffe'::bytea, 'bin', $1, false)", [topic]);
    await stack.broadcast(topic, 'json-after', { j: 1 });
    const m = await h2.inbox.waitFor((x) => x.event === 'bin');
    assert.ok(m.payload instanceof ArrayBuffer, `payload is ${Object.prototype.toString.call(m.payload)}`);
    assert.deepEqual([...new Uint8Array(m.payload)], [0, 1, 2, 3, 255, 254]);
    assert.match(m.meta?.id ?? '', UUID_RE);
    await h2.inbox.waitFor((x) => x.event === 'json-after');
    await h1.inbox.waitFor((x) => x.event === 'json-after');
    assert.deepEqual(events(h1), ['json-after'], 'a v1 client cannot represent binary payloads');
    assert.deepEqual(events(h2), ['bin', 'json-after']);
  } finally {
    await stack.closeClient(c1);
    await stack.closeClient(c2);
  }
});
