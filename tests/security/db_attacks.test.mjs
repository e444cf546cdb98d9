// Attacks on the database side, end to end: real PostgreSQL, the real sidecar (logged in as the
// least-privileged `sidecar` role), unmodified realtime-js. Actors: mallory, a non-superuser who
// owns a table; anon, PostgREST's role; an anonymous client holding the anon key.
// Each test is the attack, with the refusal it must meet and a check that nobody else suffered.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startStack, join, uniq, delay, Inbox, roomPoliciesSql } from '../lib/harness.mjs';

let stack;

before(async () => {
  stack = await startStack({ name: 'db-attacks' });
  await stack.sql(`
    create role mallory login;
    grant create on schema public to mallory;
    create table public.loot (seen text);
    grant insert on public.loot to public;
  `);
  await stack.assertHealthy();
});
after(async () => {
  await stack?.stop();
});

/** A realtime-js channel with postgres_changes bindings; returns its changes and system inboxes. */
async function changes(bindings, { token } = {}) {
  const client = stack.client();
  if (token) client.setAuth(token);
  const topic = uniq('db');
  const inbox = new Inbox(`changes on ${topic}`);
  const system = new Inbox(`system on ${topic}`);
  const ch = client.channel(topic);
  for (const b of bindings) ch.on('postgres_changes', b, (p) => inbox.push(p));
  ch.on('system', {}, (m) => system.push(m));
  const statuses = new Inbox(`statuses of ${topic}`);
  ch.subscribe((status, err) => statuses.push({ status, err }));
  const first = await statuses.waitFor(() => true, 25000, `subscribe ${topic}`);
  assert.equal(first.status, 'SUBSCRIBED', first.err?.message);
  const sys = await system.waitFor((m) => m.extension === 'postgres_changes', 15000, 'postgres_changes system message');
  return { client, inbox, system, sys };
}

/** Runs `sql` as database role `role` (SET ROLE in one session), returning its notices too. */
async function asRole(role, sql) {
  const s = await stack.session();
  const notices = [];
  s.on('notice', (n) => notices.push(n.message));
  try {
    await s.query(`set role ${role}`);
    const res = await s.query(sql);
    return { rows: res.rows, notices };
  } finally {
    await s.end().catch(() => {});
    stack.sessions.delete(s);
  }
}

test('finding 1: a table owner\'s domain check and json cast never run as a superuser', async () => {
  await asRole('mallory', `
    create function public.spy(v int) returns boolean language plpgsql as $$
    begin
      insert into public.loot values (current_user || ' superuser=' ||
                                      (select rolsuper from pg_roles where rolname = current_user));
      begin execute 'alter role mallory superuser'; exception when others then null; end;
      return true;
    end $$;
    create domain public.spied as int check (public.spy(value));
    create type public.mood as enum ('ok', 'sad');
    create function public.mood_json(m public.mood) returns json language sql as $$
      select public.spy(1); select to_json(m::text) $$;
    create cast (public.mood as json) with function public.mood_json(public.mood);
    create table public.victim (id int primary key, v public.spied, m public.mood);
    grant select on public.victim to anon;
    select realtime.enable('public.victim');`);
  // Her own anon key is enough for a subscription with a non-eq filter on the domain column.
  const h = await changes([{ event: '*', schema: 'public', table: 'victim', filter: 'v=gt.0' }]);
  assert.equal(h.sys.status, 'ok', h.sys.message);
  await asRole('mallory', `insert into public.victim values (1, 5, 'ok'); update public.victim set v = 6`);
  await h.inbox.waitForCount(2);
  assert.deepEqual(h.inbox.items.map((c) => [c.eventType, c.new.v, c.new.m]), [['INSERT', 5, 'ok'], ['UPDATE', 6, 'ok']]);
  const seen = (await stack.sql('select distinct seen from public.loot order by 1')).map((r) => r.seen);
  assert.deepEqual(seen, ['mallory superuser=false'], 'the code ran as mallory only');
  const [{ rolsuper }] = await stack.sql(`select rolsuper from pg_roles where rolname = 'mallory'`);
  assert.equal(rolsuper, false);
  await stack.closeClient(h.client);
});

test('finding 1: enable()/disable() of a table one does not own is refused', async () => {
  await stack.sql('create table public.not_mallorys (id int primary key)');
  await assert.rejects(asRole('mallory', `select realtime.enable('public.not_mallorys')`), /must be owner of table not_mallorys/);
  await assert.rejects(asRole('anon', `select realtime.disable('public.victim')`), /must be owner of table victim/);
});

test('finding 2: anon cannot send to a private channel or forge presence from SQL', async () => {
  await stack.sql(roomPoliciesSql('members2', { readExtensions: ['broadcast', 'presence'] }));
  await stack.sql(`insert into members2 values ('vault', 'alice', true)`);
  const client = stack.client();
  client.setAuth(stack.token({ role: 'authenticated', sub: 'alice' }));
  const inbox = new Inbox('vault');
  const presence = new Inbox('vault presence');
  const ch = client.channel('vault', { config: { private: true } });
  ch.on('broadcast', { event: '*' }, (m) => inbox.push(m));
  ch.on('presence', { event: 'join' }, (p) => presence.push(p));
  const statuses = new Inbox('statuses');
  ch.subscribe((status, err) => statuses.push({ status, err }));
  const first = await statuses.waitFor(() => true, 20000);
  assert.equal(first.status, 'SUBSCRIBED', first.err?.message);

  const sent = await asRole('anon', `
    select realtime.send('{"forged": 1}', 'forged', 'vault', true);
    select realtime.send_binary('\\x01', 'forged', 'vault', true);`);
  assert.ok(sent.notices.some((n) => /WarnSendingBroadcastMessage: You do not have permissions to write to this Channel topic: vault/.test(n)),
    JSON.stringify(sent.notices));
  await assert.rejects(asRole('anon', `select realtime.broadcast('vault', 'forged', '{}', true)`),
    /You do not have permissions to write to this Channel topic: vault/);
  await assert.rejects(asRole('anon', `select realtime._enqueue('vault', 'presence_diff',
      '{"joins": {"fake": {"metas": [{"phx_ref": "x"}]}}, "leaves": {}}'::jsonb, true, null, null, 'presence')`),
    /permission denied for function _enqueue/);
  await assert.rejects(asRole('anon', `select realtime._publish(gen_random_uuid(), array['vault'], array[true],
      array['presence'], array['presence_diff'], array['{"joins": {"fake": {"metas": [{}]}}, "leaves": {}}'::jsonb],
      array[null::bytea])`), /permission denied for function _publish/);
  // A member with the INSERT policy may; the superuser (bypasses RLS) may.
  await asRole('authenticated', `select set_config('request.jwt.claims', '{"sub": "alice"}', false),
                                        set_config('request.jwt.claim.sub', 'alice', false);
                                 select realtime.send('{"ok": 1}', 'member', 'vault', true)`);
  await stack.sql(`select realtime.send('{"ok": 2}', 'service', 'vault', true)`);
  await inbox.waitForCount(2, (m) => m.event === 'member' || m.event === 'service');
  await delay(300);
  assert.deepEqual(inbox.items.map((m) => m.event).sort(), ['member', 'service'], 'nothing forged arrived');
  assert.equal(presence.items.length, 0, 'no fake presence');
  await stack.closeClient(client);
});

test('finding 3: the sidecar is connected as a role with no special rights', async () => {
  const rows = await stack.sql(`
    select a.usename, r.rolsuper, r.rolbypassrls, r.rolcreaterole, r.rolcreatedb,
           pg_has_role(a.usename, 'realtime_sidecar', 'member') as in_realtime_sidecar
      from pg_stat_activity a join pg_roles r on r.rolname = a.usename
     where a.pid <> pg_backend_pid() and a.backend_type = 'client backend' and a.usename <> 'postgres'`);
  assert.ok(rows.length >= 2, 'the sidecar has its reader and pool connections');
  const [{ n }] = await stack.sql(`select count(*)::int as n from pg_stat_activity
                                    where usename = 'postgres' and backend_type = 'client backend' and pid <> pg_backend_pid()
                                      and (application_name like 'pg-realtime%' or query like 'LISTEN%')`);
  assert.equal(n, 0, 'no sidecar connection is the superuser');
  for (const r of rows) {
    assert.deepEqual(r, { usename: 'sidecar', rolsuper: false, rolbypassrls: false, rolcreaterole: false,
      rolcreatedb: false, in_realtime_sidecar: true });
  }
  // …and everything still works through it (private join, postgres_changes, REST): the other
  // tests of this suite and of tests/*.test.mjs run against the same role.
  await stack.assertHealthy();
});

test('finding 4: a filter on a column the role may not select is refused', async () => {
  await stack.sql(`
    create table public.salaries (id int primary key, name text, secret int);
    grant select (id, name) on public.salaries to anon;
    select realtime.enable('public.salaries');`);
  const bad = await changes([{ event: '*', schema: 'public', table: 'salaries', filter: 'secret=eq.42' }]);
  assert.equal(bad.sys.status, 'error');
  assert.match(bad.sys.message, /permission denied for column "secret"/);
  await stack.sql(`insert into public.salaries values (1, 'x', 42)`);
  await delay(300);
  assert.equal(bad.inbox.items.length, 0);
  const ok = await changes([{ event: '*', schema: 'public', table: 'salaries', filter: 'name=eq.y' }]);
  assert.equal(ok.sys.status, 'ok', ok.sys.message);
  await stack.sql(`insert into public.salaries values (2, 'y', 43)`);
  const [c] = await ok.inbox.waitForCount(1);
  assert.deepEqual(c.new, { id: 2, name: 'y' }, 'the secret column never travels');
  await stack.closeClient(bad.client);
  await stack.closeClient(ok.client);
});

test('finding 5: no error events about rows a policy hides; uncheckable RLS tables are refused', async () => {
  await stack.sql(`
    create table public.diary (owner text, body text);
    alter table public.diary enable row level security;
    create policy own on public.diary for select to authenticated
      using (owner = current_setting('request.jwt.claims', true)::jsonb ->> 'sub');
    grant select on public.diary to authenticated;
    select realtime.enable('public.diary');`);
  const token = stack.token({ role: 'authenticated', sub: 'eve' });
  const h = await changes([{ event: '*', schema: 'public', table: 'diary', filter: 'owner=eq.bob' }], { token });
  assert.equal(h.sys.status, 'error');
  assert.match(h.sys.message, /row level security and no primary key/);
  await stack.sql(`insert into public.diary values ('bob', 'my secret')`);
  await delay(500);
  assert.equal(h.inbox.items.length, 0, 'not even an Error 400 event');
  await stack.closeClient(h.client);
});

test('finding 13: REPLICA IDENTITY FULL sends the whole old row, only where the policy showed it', async () => {
  await stack.sql(`
    create table public.tickets (id int primary key, owner text, status text, note text);
    alter table public.tickets replica identity full;
    alter table public.tickets enable row level security;
    create policy own on public.tickets for select to authenticated
      using (owner = current_setting('request.jwt.claims', true)::jsonb ->> 'sub');
    grant select (id, owner, status) on public.tickets to authenticated;
    select realtime.enable('public.tickets');
    insert into public.tickets values (1, 'ann', 'open', 'private'), (2, 'ben', 'open', 'private');`);
  const h = await changes([{ event: '*', schema: 'public', table: 'tickets' }],
    { token: stack.token({ role: 'authenticated', sub: 'ann' }) });
  await stack.sql(`update public.tickets set status = 'done' where id = 1`);
  await stack.sql(`update public.tickets set owner = 'ann' where id = 2`);
  await stack.sql(`delete from public.tickets where id = 1`);
  await h.inbox.waitForCount(3);
  const seen = h.inbox.items.map((c) => [c.eventType, c.old]);
  assert.deepEqual(seen, [
    ['UPDATE', { id: 1, owner: 'ann', status: 'open' }],
    ['UPDATE', {}],
    ['DELETE', { id: 1, owner: 'ann', status: 'done' }],
  ]);
  // The seeds' pattern works: comparing old and new status tells a real change.
  assert.equal(h.inbox.items[0].old.status !== h.inbox.items[0].new.status, true);
  await stack.closeClient(h.client);
});
