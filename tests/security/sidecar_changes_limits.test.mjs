// Attack (issue 10, finding 7, sidecar side): one anonymous join with 100 postgres_changes
// bindings x 100 filter conditions (132 KiB) made every INSERT on the table 30x slower, and the
// subscriptions stayed until the sweep after the client left. Now filters, bindings per join and
// bindings per socket are capped (a postgres_changes system error, nothing subscribed), and a
// channel's subscription rows are deleted as soon as it leaves or its socket closes.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startStack, uniq } from '../lib/harness.mjs';
import { RawSocket } from '../lib/raw.mjs';
import { eventually } from '../lib/util.mjs';

let stack;
before(async () => {
  stack = await startStack({ name: 'sec-changes-limits' });
  await stack.sql(`
    create table public.sec_items (id bigint primary key, a int, b int, c text);
    grant select, insert on public.sec_items to anon;
    select realtime.enable('public.sec_items');
  `);
  await stack.assertHealthy();
});
after(async () => {
  await stack?.stop();
});

const subscriptions = async () => Number((await stack.sql('select count(*)::int as n from realtime.subscription'))[0].n);

const binding = (filter) => ({ event: '*', schema: 'public', table: 'sec_items', ...(filter ? { filter } : {}) });

/** A raw socket joined to a fresh topic with `bindings`; resolves with its postgres_changes system message. */
async function joinChanges(s, bindings) {
  const topic = `realtime:${uniq('db')}`;
  const config = { broadcast: { ack: false, self: false }, presence: { enabled: false, key: '' }, postgres_changes: bindings, private: false };
  const { joinRef, reply } = await s.join(topic, { config });
  assert.equal(reply.payload.status, 'ok', JSON.stringify(reply.payload));
  const system = await s.frames.waitFor((f) => f.topic === topic && f.event === 'system' && f.payload.extension === 'postgres_changes', 15000, `system message on ${topic}`);
  return { topic, joinRef, system: system.payload };
}

async function connect() {
  return stack.trackRaw(await RawSocket.connect(stack.wsUrl()));
}

test('100 bindings x 100 conditions: refused with a postgres_changes error, nothing subscribed, writers unaffected', async () => {
  const s = await connect();
  const filter = Array.from({ length: 100 }, (_, i) => `a=neq.${i}`).join(',');
  const huge = Array.from({ length: 100 }, () => binding(filter));
  const { system } = await joinChanges(s, huge);
  assert.equal(system.status, 'error');
  assert.equal(system.message, 'Too many postgres_changes entries: a channel may have at most 20');

  const few = Array.from({ length: 2 }, () => binding(filter));
  const second = await joinChanges(s, few);
  assert.equal(second.system.status, 'error');
  assert.equal(second.system.message, 'Error parsing `filter` params: a filter may have at most 10 conditions');
  assert.equal(await subscriptions(), 0, 'no subscription row was created');

  await stack.sql('insert into public.sec_items (id, a) values (1, 1)');
  assert.equal((await s.heartbeat()).payload.status, 'ok');
  await stack.assertHealthy();
});

test('bindings per socket are capped across channels', async () => {
  const s = await connect();
  for (let i = 0; i < 5; i++) {
    const { system } = await joinChanges(s, Array.from({ length: 20 }, (_, j) => binding(`a=eq.${i * 100 + j}`)));
    assert.equal(system.message, 'Subscribed to PostgreSQL', `channel ${i}`);
  }
  const sixth = await joinChanges(s, [binding('a=eq.1')]);
  assert.deepEqual(
    { status: sixth.system.status, message: sixth.system.message },
    { status: 'error', message: 'Too many postgres_changes entries: a connection may have at most 100 over all its channels' },
  );
  assert.equal(await subscriptions(), 100);
  s.terminate();
  await eventually(async () => (await subscriptions()) === 0, { timeout: 10000, label: 'rows deleted after the socket closed' });
  await stack.assertHealthy();
});

test('leaving a channel deletes its subscription rows at once (well before the 30 s sweep grace)', async () => {
  const s = await connect();
  const kept = await joinChanges(s, [binding('a=eq.1'), binding()]);
  const left = await joinChanges(s, [binding('a=eq.2'), binding('c=eq.x'), binding()]);
  assert.equal(left.system.message, 'Subscribed to PostgreSQL');
  assert.equal(await subscriptions(), 5);

  const ref = s.push(left.topic, 'phx_leave', {}, { joinRef: left.joinRef });
  assert.equal((await s.reply(ref)).payload.status, 'ok');
  await eventually(async () => (await subscriptions()) === 2, { timeout: 5000, label: "the left channel's rows deleted" });

  // The kept channel still gets its changes.
  await stack.sql('insert into public.sec_items (id, a) values (2, 1)');
  const change = await s.frames.waitFor((f) => f.topic === kept.topic && f.event === 'postgres_changes');
  assert.equal(change.payload.data.record.id, 2);

  s.close();
  await eventually(async () => (await subscriptions()) === 0, { timeout: 5000, label: 'rows deleted after the socket closed' });
  await stack.assertHealthy();
});
