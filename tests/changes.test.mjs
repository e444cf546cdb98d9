// Postgres Changes end to end with unmodified realtime-js: every event type, filters, select,
// rollback, multi-row statements, commit order, wait-for-subscription, bad input, and an RLS leak
// suite in which every inbox is checked exactly.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startStack, uniq, delay, Inbox } from './lib/harness.mjs';

let stack;

before(async () => {
  stack = await startStack({ name: 'changes' });
  await stack.sql(`
    create type mood as enum ('happy', 'sad');
    create table public.todos (
      id bigint primary key, owner text, title text, done boolean default false,
      tags text[], meta jsonb, price numeric, due timestamptz, uid uuid, blob bytea, feeling mood);
    grant select, insert, update, delete on public.todos to anon, authenticated;
    select realtime.enable('public.todos');

    create table public.notes (id bigint primary key, owner text not null, body text, secret text);
    alter table public.notes enable row level security;
    create policy "own notes" on public.notes for select to authenticated
      using (owner = current_setting('request.jwt.claims', true)::jsonb ->> 'sub');
    grant select (id, owner, body) on public.notes to authenticated;
    select realtime.enable('public.notes');

    create table public.hidden (id bigint primary key, x text);
    select realtime.enable('public.hidden');

    create table public.not_enabled (id bigint primary key);

    create table public.events (id bigint, at date not null, what text, primary key (id, at))
      partition by range (at);
    create table public.events_2026 partition of public.events for values from ('2026-01-01') to ('2027-01-01');
    grant select on public.events to anon;
    create publication supabase_realtime;
    alter publication supabase_realtime add table public.events;
  `);
  await stack.assertHealthy();
});
after(async () => {
  await stack?.stop();
});

/** A realtime-js channel with postgres_changes bindings; resolves once subscribed to Postgres. */
async function subscribe(bindings, { token, wait = false, expectError = false, sidecar = stack } = {}) {
  const client = sidecar.client();
  if (token) client.setAuth(token);
  const topic = uniq('db');
  const changes = new Inbox(`changes on ${topic}`);
  const system = new Inbox(`system on ${topic}`);
  const statuses = new Inbox(`statuses of ${topic}`);
  const config = wait ? { postgres_changes_options: { wait: true, timeout: 10000 } } : {};
  const ch = client.channel(topic, { config });
  for (const b of bindings) ch.on('postgres_changes', b, (p) => changes.push(p));
  ch.on('system', {}, (m) => system.push(m));
  ch.subscribe((status, err) => statuses.push({ status, err }));
  const first = await statuses.waitFor(() => true, 25000, `subscribe ${topic}`);
  if (!expectError) {
    assert.equal(first.status, 'SUBSCRIBED', first.err?.message);
    if (!wait) await system.waitFor((m) => m.extension === 'postgres_changes', 15000, 'subscription system message');
    const sys = system.items.find((m) => m.extension === 'postgres_changes');
    if (sys) assert.equal(sys.status, 'ok', sys.message);
  }
  return { client, ch, changes, system, statuses, topic, first };
}

const user = (sub) => stack.token({ role: 'authenticated', sub });

describe('events and values', () => {
  test('INSERT, UPDATE, DELETE with the §6.4 shape and faithful values', async () => {
    const h = await subscribe([{ event: '*', schema: 'public', table: 'todos' }]);
    await stack.sql(`insert into todos values (1, 'ann', 'write', false, '{a,b}', '{"k": [1, 2]}', 12.50,
      '2026-11-26 10:00:00+00', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x0102', 'happy')`);
    await stack.sql(`update todos set done = true, title = 'written' where id = 1`);
    await stack.sql(`delete from todos where id = 1`);
    await h.changes.waitForCount(3);
    const [i, u, d] = h.changes.items;
    assert.equal(i.eventType, 'INSERT');
    assert.equal(i.schema, 'public');
    assert.equal(i.table, 'todos');
    assert.match(i.commit_timestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    assert.equal(i.errors, null);
    assert.deepEqual(i.new, {
      id: 1, owner: 'ann', title: 'write', done: false, tags: ['a', 'b'], meta: { k: [1, 2] }, price: 12.5,
      due: '2026-11-26T10:00:00+00:00', uid: 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', blob: '\\x0102', feeling: 'happy',
    });
    assert.deepEqual(i.old, {});
    assert.equal(u.eventType, 'UPDATE');
    assert.equal(u.new.done, true);
    assert.deepEqual(u.old, { id: 1 });
    assert.equal(d.eventType, 'DELETE');
    assert.deepEqual(d.old, { id: 1 });
    assert.deepEqual(d.new, {});
  });

  test('event-specific bindings and a rolled-back transaction', async () => {
    const h = await subscribe([{ event: 'INSERT', schema: 'public', table: 'todos' },
      { event: 'DELETE', schema: 'public', table: 'todos' }]);
    await stack.sql(`begin; insert into todos (id, title) values (10, 'rolled back'); rollback;`).catch(() => {});
    const s = await stack.session();
    await s.query('begin');
    await s.query(`insert into todos (id, title) values (11, 'kept')`);
    await s.query(`savepoint x`);
    await s.query(`insert into todos (id, title) values (12, 'dropped')`);
    await s.query(`rollback to savepoint x`);
    await s.query('commit');
    await stack.sql(`update todos set title = 'updated' where id = 11`);
    await stack.sql(`delete from todos where id = 11`);
    await h.changes.waitForCount(2);
    await delay(300);
    assert.deepEqual(h.changes.items.map((c) => [c.eventType, c.new.id ?? c.old.id]), [['INSERT', 11], ['DELETE', 11]]);
  });

  test('a multi-row statement and several transactions arrive in commit order', async () => {
    const h = await subscribe([{ event: 'INSERT', schema: 'public', table: 'todos', filter: 'owner=eq.bulk' }]);
    await stack.sql(`insert into todos (id, owner) select g, 'bulk' from generate_series(100, 149) g`);
    for (let i = 150; i < 160; i += 1) await stack.sql('insert into todos (id, owner) values ($1, $2)', [i, 'bulk']);
    await h.changes.waitForCount(60);
    assert.deepEqual(h.changes.items.map((c) => c.new.id), [...Array(60).keys()].map((k) => k + 100));
  });

  test('select limits columns to those listed plus the primary key', async () => {
    const h = await subscribe([{ event: 'INSERT', schema: 'public', table: 'todos', filter: 'owner=eq.sel', select: ['title'] }]);
    await stack.sql(`insert into todos (id, owner, title, done) values (200, 'sel', 't', true)`);
    const [c] = await h.changes.waitForCount(1);
    assert.deepEqual(c.new, { id: 200, title: 't' });
  });

  test('a record over 1 MiB keeps values up to 64 bytes and says Error 413', async () => {
    const h = await subscribe([{ event: 'INSERT', schema: 'public', table: 'todos', filter: 'owner=eq.huge' }]);
    await stack.sql(`insert into todos (id, owner, title) values (600, 'huge', repeat('x', 1100000))`);
    const [c] = await h.changes.waitForCount(1);
    assert.deepEqual(c.errors, ['Error 413: Payload Too Large']);
    assert.equal(c.new.id, 600);
    assert.equal(c.new.owner, 'huge');
    assert.ok(!('title' in c.new));
  });

  test('partitioned tables report under the parent; tables added to supabase_realtime are captured', async () => {
    const h = await subscribe([{ event: 'INSERT', schema: 'public', table: 'events' }]);
    await stack.sql(`insert into events values (1, '2026-05-01', 'launch')`);
    const [c] = await h.changes.waitForCount(1);
    assert.equal(c.table, 'events');
    assert.equal(c.new.what, 'launch');
  });
});

describe('filters', () => {
  const cases = [
    ['id=eq.301', [301]],
    ['id=neq.301', [302, 303]],
    ['id=lt.302', [301]],
    ['id=lte.302', [301, 302]],
    ['id=gt.302', [303]],
    ['id=gte.302', [302, 303]],
    ['id=in.(301,303)', [301, 303]],
    ['title=like.*b*', []],
    ['title=like.%b%', [301, 302]],
    ['title=ilike.%B%', [301, 302]],
    ['title=match.^[ac]', [301, 303]],
    ['title=imatch.^A', [301]],
    ['done=is.true', [302]],
    ['tags=is.null', [301, 302, 303]],
    ['price=isdistinct.1', [302, 303]],
    ['id=not.eq.301', [302, 303]],
    ['id=not.in.(301,302)', [303]],
    ['owner=eq.f,id=gt.301', [302, 303]],
    ['title=eq."a,b"', []],
  ];
  test('every operator, not., AND, quoting — on one batch of rows', async () => {
    const handles = [];
    for (const [filter] of cases) {
      handles.push(await subscribe([{ event: 'INSERT', schema: 'public', table: 'todos', filter }]));
    }
    await stack.sql(`insert into todos (id, owner, title, done, price) values
      (301, 'f', 'abc', false, 1), (302, 'f', 'Bob', true, 2), (303, 'f', 'cat', false, null)`);
    // A barrier on another table: the queue delivers in commit order across tables.
    const marker = await subscribe([{ event: 'INSERT', schema: 'public', table: 'events', filter: 'id=eq.399' }]);
    await stack.sql(`insert into events values (399, '2026-06-01', 'barrier')`);
    await marker.changes.waitForCount(1);
    await delay(200);
    for (let i = 0; i < cases.length; i += 1) {
      const got = handles[i].changes.items.map((c) => c.new.id).sort();
      assert.deepEqual(got, cases[i][1], `filter ${cases[i][0]}`);
    }
  });

  test('bad input: a clear postgres_changes system error, the channel and server stay up', async () => {
    const bad = [
      [{ event: '*', schema: 'public', table: 'no_such_table' }, /Unable to subscribe to changes/],
      [{ event: '*', schema: 'public', table: 'not_enabled' }, /Unable to subscribe to changes/],
      [{ event: '*', schema: 'public', table: 'todos', filter: 'nope=eq.1' }, /column "nope" does not exist/],
      [{ event: '*', schema: 'public', table: 'todos', filter: 'id=xx.1' }, /unknown operator `xx`/],
      [{ event: '*', schema: 'public', table: 'todos', filter: 'id=eq.abc' }, /invalid input syntax for type bigint/],
      [{ event: '*', schema: 'public', table: 'todos', filter: `id=in.(${[...Array(101).keys()].join(',')})` }, /at most 100 values/],
      [{ event: '*', schema: 'public', table: 'todos', filter: 'title=match."("' }, /regular expression/],
      [{ event: '*', schema: 'public', table: 'todos', filter: 'title=match.(' }, /unbalanced parentheses/],
      [{ event: '*', schema: 'public', table: 'todos', filter: `title=eq."'); drop table todos; --"` }, null],
    ];
    for (const [binding, message] of bad) {
      const h = await subscribe([binding], { expectError: true });
      assert.equal(h.first.status, 'SUBSCRIBED');
      const sys = await h.system.waitFor((m) => m.extension === 'postgres_changes');
      if (message) {
        assert.equal(sys.status, 'error', JSON.stringify(binding));
        assert.match(sys.message, message);
      } else {
        assert.equal(sys.status, 'ok', 'a SQL-looking value is just a value');
      }
    }
    const [{ n }] = await stack.sql('select count(*)::int as n from todos');
    assert.ok(n >= 0, 'todos still exists');
    await stack.assertHealthy();
  });
});

describe('wait for the subscription', () => {
  test('postgres_changes_options.wait: SUBSCRIBED means live; a refused binding refuses the join', async () => {
    const h = await subscribe([{ event: 'INSERT', schema: 'public', table: 'todos', filter: 'id=eq.500' }], { wait: true });
    await stack.sql(`insert into todos (id) values (500)`); // right after SUBSCRIBED: never missed
    await h.changes.waitForCount(1);
    const bad = await subscribe([{ event: '*', schema: 'public', table: 'not_enabled' }], { wait: true, expectError: true });
    assert.equal(bad.first.status, 'CHANNEL_ERROR');
    assert.match(bad.first.err.message, /^RealtimeDisabledForConfiguration: Unable to subscribe/);
    await stack.closeClient(bad.client);
  });
});

describe('row-level security: nobody sees what their policy hides', () => {
  test('own rows only; DELETE of others; UPDATE out of view; hidden columns; no grants', async () => {
    const alice = await subscribe([{ event: '*', schema: 'public', table: 'notes' }], { token: user('alice') });
    const bob = await subscribe([{ event: '*', schema: 'public', table: 'notes' }], { token: user('bob') });
    const anon = await subscribe([{ event: '*', schema: 'public', table: 'hidden' }], { expectError: true });
    const refused = await anon.system.waitFor((m) => m.extension === 'postgres_changes');
    assert.equal(refused.status, 'error');
    assert.match(refused.message, /permission denied for table public\.hidden/);
    await stack.sql(`insert into notes values (1, 'alice', 'a1', 's1'), (2, 'bob', 'b1', 's2')`);
    await stack.sql(`update notes set owner = 'bob' where id = 1`); // leaves alice's view, enters bob's
    await stack.sql(`delete from notes where id = 2`); // bob's
    await stack.sql(`insert into hidden values (1, 'x')`);
    await stack.sql(`insert into notes values (9, 'alice', 'end', 's9')`);
    await alice.changes.waitFor((c) => c.new?.id === 9);
    await bob.changes.waitForCount(3);
    await delay(300);
    assert.deepEqual(alice.changes.items.map((c) => [c.eventType, c.new.id ?? c.old.id]), [['INSERT', 1], ['INSERT', 9]]);
    assert.deepEqual(bob.changes.items.map((c) => [c.eventType, c.new.id ?? c.old.id]), [['INSERT', 2], ['UPDATE', 1], ['DELETE', 2]]);
    for (const c of [...alice.changes.items, ...bob.changes.items]) {
      assert.ok(!('secret' in c.new), 'a column the role may not select never appears');
    }
    assert.equal(anon.changes.items.length, 0, 'a role with no grant hears nothing, not even an error');
  });

  test('token refresh re-creates the subscriptions with the new claims', async () => {
    const h = await subscribe([{ event: 'INSERT', schema: 'public', table: 'notes' }], { token: user('carol') });
    await stack.sql(`insert into notes values (20, 'carol', 'c', 's')`);
    await h.changes.waitForCount(1);
    await h.client.setAuth(user('dave'));
    await h.system.waitForCount(2, (m) => m.extension === 'postgres_changes' && m.status === 'ok');
    await stack.sql(`insert into notes values (21, 'carol', 'c2', 's'), (22, 'dave', 'd', 's')`);
    await h.changes.waitFor((c) => c.new.id === 22);
    await delay(200);
    assert.deepEqual(h.changes.items.map((c) => c.new.id), [20, 22]);
  });
});

describe('subscription lifecycle', () => {
  const count = async (marker) => {
    const [{ n }] = await stack.sql('select count(*)::int as n from realtime.subscription where concat(eq_value, filters) like $1', [`%${marker}%`]);
    return n;
  };

  test('leave removes the subscription; a killed sidecar\'s subscriptions go within 10 s', async () => {
    const left = uniq('left');
    const h = await subscribe([{ event: '*', schema: 'public', table: 'todos', filter: `owner=eq.${left}` }]);
    assert.equal(await count(left), 1);
    await h.ch.unsubscribe();
    // The channel stops receiving at once; its row is swept by the next heartbeats.
    await stack.sql('insert into todos (id, owner) values (900, $1)', [left]);
    await delay(300);
    assert.equal(h.changes.items.length, 0);

    const extra = await stack.startExtraSidecar();
    const gone = uniq('gone');
    await subscribe([{ event: '*', schema: 'public', table: 'todos', filter: `owner=eq.${gone}` }], { sidecar: extra });
    assert.equal(await count(gone), 1);
    extra.child.kill('SIGKILL');
    const t0 = Date.now();
    while ((await count(gone)) > 0) {
      assert.ok(Date.now() - t0 < 10000, 'subscriptions of a dead sidecar removed within 10 s');
      await delay(200);
    }
  });
});
