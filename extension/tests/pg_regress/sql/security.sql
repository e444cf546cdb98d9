-- Attacks from inside the database, each with the refusal expected. Actors: mallory, a
-- non-superuser who owns a table; anon (PostgREST's role, no special rights); authenticated.
\set VERBOSITY terse
select epoch, head from realtime._position() \gset
create role mallory nologin;
grant create on schema public to mallory;
grant mallory to postgres;

-- 1. A table owner's code never runs with more privilege than the owner. mallory's domain CHECK
-- and her enum's cast to json record who runs them and try to make her a superuser; the
-- subscription (her own anon key is enough) has a non-eq filter on the domain column.
set role mallory;
create table public.loot (seen text);
grant insert on public.loot to public;
create function public.spy(v int) returns boolean language plpgsql as $$
begin
  insert into public.loot values (current_user || ' superuser=' ||
                                  (select rolsuper from pg_roles where rolname = current_user));
  begin
    execute 'alter role mallory superuser';
  exception when others then
    null;
  end;
  return true;
end $$;
create domain public.spied as int check (public.spy(value));
create type public.mood as enum ('ok', 'sad');
create function public.mood_json(m public.mood) returns json language sql as $$
  select public.spy(1); select to_json(m::text) $$;
create cast (public.mood as json) with function public.mood_json(public.mood);
create table public.victim (id int primary key, v public.spied, m public.mood);
grant select on public.victim to anon;
select realtime.enable('public.victim');
reset role;
select count(*) from realtime._subscribe('00000000-0000-0000-0000-0000000000e1', '{"role":"anon"}',
  '[{"binding": 1, "event": "*", "schema": "public", "table": "victim",
     "filters": [{"column": "v", "op": "gt", "value": "0"}, {"column": "m", "op": "neq", "value": "sad"}]}]');
set role mallory;
insert into public.victim values (1, 5, 'ok');
update public.victim set v = 6;
reset role;
select distinct seen from public.loot order by 1;
select rolsuper as mallory_is_superuser from pg_roles where rolname = 'mallory';
select payload::jsonb #>> '{data,type}' as type, payload::jsonb #> '{data,record}' as record
  from realtime._poll(:'epoch', :head, 100) where extension = 'postgres_changes' order by seq;

-- 1b. enable()/disable() need ownership of the table, as ALTER TABLE does.
create table public.owned_by_postgres (id int primary key);
set role anon;
select realtime.enable('public.owned_by_postgres');
select realtime.disable('public.victim');
set role mallory;
select realtime.disable('public.owned_by_postgres');
reset role;

-- 1c. Every SECURITY DEFINER function pins its search_path.
select p.oid::regprocedure as definer_without_search_path
  from pg_proc p
 where p.pronamespace = 'realtime'::regnamespace and p.prosecdef
   and not exists (select from unnest(p.proconfig) c where c like 'search\_path=%');

-- 2. SQL senders obey realtime.messages' INSERT policies on private channels; internal functions
-- are not PUBLIC. authenticated may send to 'open-room' only.
create policy "send to open-room" on realtime.messages for insert to authenticated
  with check (realtime.topic() = 'open-room' and realtime.messages.extension = 'broadcast');
select max(seq) as head from realtime.queue \gset
set role anon;
select realtime.send('{"forged": true}', 'e', 'private-room', true);
select realtime.send_binary('\x01', 'e', 'private-room', true);
select realtime.broadcast('private-room', 'e', '{"forged": true}', true);
select realtime._enqueue('private-room', 'presence_diff', '{"joins": {"fake": {"metas": [{}]}}, "leaves": {}}'::jsonb,
                         true, null, null, 'presence');
select realtime._publish(gen_random_uuid(), array['private-room'], array[true], array['presence'],
                         array['presence_diff'], array['{}'::jsonb], array[null::bytea]);
insert into realtime.messages (topic, extension, event, payload, private)
  values ('private-room', 'broadcast', 'e', '{"forged": true}', true);
select realtime.broadcast('public-room', 'public is fine', '{}');
select realtime.send('{"n": 1}', 'public send is fine', 'public-room', false);
set role authenticated;
select realtime.send('{"n": 2}', 'allowed', 'open-room', true);
select realtime.broadcast('open-room', 'allowed too', '{}', true);
select realtime.send('{"n": 3}', 'denied', 'other-room', true);
reset role;
-- roles that bypass row-level security (here: the superuser) are not checked
select realtime.send('{"n": 4}', 'superuser', 'private-room', true);
select topic, private, extension, event from realtime._poll(:'epoch', :head, 100)
 where extension <> 'postgres_changes' order by seq;
drop policy "send to open-room" on realtime.messages;

-- 3. Grants: what PUBLIC (here: anon) and the sidecar's role may execute.
select p.proname as executable_by_anon
  from pg_proc p
 where p.pronamespace = 'realtime'::regnamespace and has_function_privilege('anon', p.oid, 'execute')
 order by 1;
select p.proname as executable_by_sidecar
  from pg_proc p
 where p.pronamespace = 'realtime'::regnamespace and p.proname like '\_%'
   and has_function_privilege('realtime_sidecar', p.oid, 'execute')
 order by 1;
select c.relname as table_readable_by_anon
  from pg_class c
 where c.relnamespace = 'realtime'::regnamespace and c.relkind in ('r', 'v', 'p')
   and has_table_privilege('anon', c.oid, 'select')
 order by 1;
select r.rolname as sidecar_may_set_role
  from pg_roles r where pg_has_role('realtime_sidecar', r.oid, 'member') and r.rolname <> 'realtime_sidecar'
 order by 1;

-- 4. A filter on a column the role may not select is refused (its values would leak through
-- which rows arrive); so is a table it may not select at all.
create table public.salaries (id int primary key, name text, secret int);
grant select (id, name) on public.salaries to anon;
create table public.hidden (id int primary key);
select realtime.enable('public.salaries');
select realtime.enable('public.hidden');
select * from realtime._subscribe('00000000-0000-0000-0000-0000000000e1', '{"role":"anon"}',
  '[{"binding": 2, "event": "*", "schema": "public", "table": "salaries",
     "filters": [{"column": "secret", "op": "eq", "value": "42"}]}]');
select * from realtime._subscribe('00000000-0000-0000-0000-0000000000e1', '{"role":"anon"}',
  '[{"binding": 2, "event": "*", "schema": "public", "table": "hidden", "filters": []}]');
select count(*) as name_filter_ok from realtime._subscribe('00000000-0000-0000-0000-0000000000e1', '{"role":"anon"}',
  '[{"binding": 2, "event": "*", "schema": "public", "table": "salaries",
     "filters": [{"column": "name", "op": "eq", "value": "x"}]}]');

-- 5. Under RLS, a table whose rows cannot be checked (no primary key, or one the role may not
-- select) is refused at subscribe time, and if RLS comes later nothing about its rows leaks.
create table public.rls_nopk (owner text, body text);
alter table public.rls_nopk enable row level security;
grant select on public.rls_nopk to authenticated;
create table public.rls_hidden_pk (id int primary key, owner text);
alter table public.rls_hidden_pk enable row level security;
grant select (owner) on public.rls_hidden_pk to authenticated;
create table public.late_rls (owner text);
grant select on public.late_rls to authenticated;
select realtime.enable('public.rls_nopk');
select realtime.enable('public.rls_hidden_pk');
select realtime.enable('public.late_rls');
select * from realtime._subscribe('00000000-0000-0000-0000-0000000000e1', '{"role":"authenticated","sub":"u1"}',
  '[{"binding": 3, "event": "*", "schema": "public", "table": "rls_nopk", "filters": []}]');
select * from realtime._subscribe('00000000-0000-0000-0000-0000000000e1', '{"role":"authenticated","sub":"u1"}',
  '[{"binding": 3, "event": "*", "schema": "public", "table": "rls_hidden_pk", "filters": []}]');
select count(*) from realtime._subscribe('00000000-0000-0000-0000-0000000000e1', '{"role":"authenticated","sub":"u1"}',
  '[{"binding": 4, "event": "*", "schema": "public", "table": "late_rls",
     "filters": [{"column": "owner", "op": "neq", "value": "nobody"}]}]');
alter table public.late_rls enable row level security;
create policy own on public.late_rls for select to authenticated
  using (owner = current_setting('request.jwt.claims', true)::jsonb ->> 'sub');
select max(seq) as head from realtime.queue \gset
insert into public.late_rls values ('u2'), ('u1');
select count(*) as late_rls_events from realtime._poll(:'epoch', :head, 100) where extension = 'postgres_changes';

-- 6. Roles that bypass every policy never subscribe or authorize: superusers are refused.
select * from realtime._subscribe('00000000-0000-0000-0000-0000000000e1', '{"role":"postgres"}',
  '[{"binding": 5, "event": "*", "schema": "public", "table": "salaries", "filters": []}]');
select * from realtime._authorize('postgres', '{"role":"postgres"}', 'room', '{}');

-- 7. Filters are capped per subscription (pg_realtime.max_filter_conditions, default 10).
select * from realtime._subscribe('00000000-0000-0000-0000-0000000000e1', '{"role":"anon"}',
  jsonb_build_array(jsonb_build_object('binding', 6, 'event', '*', 'schema', 'public', 'table', 'salaries',
    'filters', (select jsonb_agg(jsonb_build_object('column', 'id', 'op', 'neq', 'value', i::text))
                  from generate_series(1, 11) i))));
select * from realtime._subscribe('00000000-0000-0000-0000-0000000000e1', '{"role":"anon"}',
  jsonb_build_array(jsonb_build_object('binding', 6, 'event', '*', 'schema', 'public', 'table', 'salaries',
    'filters', jsonb_build_array(jsonb_build_object('column', 'name', 'op', 'eq', 'value', repeat('x', 70000))))));
set pg_realtime.max_subscriptions_per_table = 1;
select * from realtime._subscribe('00000000-0000-0000-0000-0000000000e1', '{"role":"anon"}',
  '[{"binding": 7, "event": "*", "schema": "public", "table": "salaries", "filters": []}]');
reset pg_realtime.max_subscriptions_per_table;

-- 13. REPLICA IDENTITY FULL: UPDATE and DELETE send the whole old row, limited to the columns the
-- subscriber may select, and none of it for an old row its policy hid.
create table public.tasks (id int primary key, owner text, status text, note text);
alter table public.tasks replica identity full;
alter table public.tasks enable row level security;
create policy own on public.tasks for select to authenticated
  using (owner = current_setting('request.jwt.claims', true)::jsonb ->> 'sub');
grant select (id, owner, status) on public.tasks to authenticated;
select realtime.enable('public.tasks');
select count(*) from realtime._subscribe('00000000-0000-0000-0000-0000000000e1', '{"role":"authenticated","sub":"u1"}',
  '[{"binding": 8, "event": "*", "schema": "public", "table": "tasks", "filters": []}]');
insert into public.tasks values (1, 'u1', 'open', 'private note'), (2, 'u2', 'open', '');
select max(seq) as head from realtime.queue \gset
update public.tasks set status = 'done' where id = 1;
update public.tasks set owner = 'u1' where id = 2;   -- u1 could not see the old row
delete from public.tasks where id = 1;
select payload::jsonb #>> '{data,type}' as type, payload::jsonb #> '{data,record}' as record,
       payload::jsonb #> '{data,old_record}' as old_record
  from realtime._poll(:'epoch', :head, 100) where extension = 'postgres_changes' order by seq;

-- The checks leave the writer's transaction as they found it: settings, role, search path.
begin;
set local timezone = 'Asia/Tokyo';
insert into public.tasks values (3, 'u1', 'open', '');
update public.tasks set status = 'x';
select current_setting('search_path') as search_path, current_setting('TimeZone') as timezone,
       current_user, current_setting('request.jwt.claims', true) as claims,
       current_setting('realtime.authorizing', true) as authorizing;
savepoint s;
set role authenticated;
select realtime.send('{}', 'e', 'private-room', true);
select current_setting('realtime.topic', true) as topic, current_setting('realtime.authorizing', true) as authorizing;
rollback to savepoint s;
select current_setting('search_path') as search_path, current_user,
       current_setting('realtime.topic', true) as topic;
commit;

-- clean up
select realtime._unsubscribe('00000000-0000-0000-0000-0000000000e1', array(select id from realtime.subscription));
drop table public.victim, public.loot, public.owned_by_postgres, public.salaries, public.hidden,
  public.rls_nopk, public.rls_hidden_pk, public.late_rls, public.tasks;
drop cast (public.mood as json);
drop function public.mood_json(public.mood);
drop type public.mood;
drop domain public.spied;
drop function public.spy(int);
revoke create on schema public from mallory;
drop role mallory;
