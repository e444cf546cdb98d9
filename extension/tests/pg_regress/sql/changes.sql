-- Postgres Changes in the database: capture, subscription validation, and routing with filters,
-- column privileges and RLS decided in the writer's transaction.
\set VERBOSITY terse
select epoch, head from realtime._position() \gset

create table todos (id bigint primary key, owner text, title text, secret text);
alter table todos enable row level security;
create policy own on todos for select to authenticated
  using (owner = current_setting('request.jwt.claims', true)::jsonb ->> 'sub');
grant select (id, owner, title) on todos to authenticated;
create view todo_view as select * from todos;
create table nopk (x int);
grant select on nopk to authenticated;
create table parts (id int, at date, primary key (id, at)) partition by range (at);
create table parts_1 partition of parts for values from ('2026-01-01') to ('2027-01-01');

-- enable: tables and partitioned tables; not views or partitions
select realtime.enable('todos');
select realtime.enable('todos');
select realtime.enable('todo_view');
select realtime.enable('parts_1');
select realtime.enable('parts');
select realtime.enable('nopk');
select tgname from pg_trigger where tgrelid = 'todos'::regclass order by 1;

-- subscribe: validation errors are for the client
select realtime._subscribe('00000000-0000-0000-0000-00000000000a', '{"role":"nobody"}', '[]');
select * from realtime._subscribe('00000000-0000-0000-0000-00000000000a', '{"role":"authenticated"}',
  '[{"binding": 1, "event": "*", "schema": "public", "table": "missing", "filters": []}]');
select * from realtime._subscribe('00000000-0000-0000-0000-00000000000a', '{"role":"authenticated"}',
  '[{"binding": 1, "event": "*", "schema": "public", "table": "todos", "filters": [{"column": "nope", "op": "eq", "value": "1"}]}]');
select * from realtime._subscribe('00000000-0000-0000-0000-00000000000a', '{"role":"authenticated"}',
  '[{"binding": 1, "event": "*", "schema": "public", "table": "todos", "filters": [{"column": "id", "op": "gt", "value": "x"}]}]');
select * from realtime._subscribe('00000000-0000-0000-0000-00000000000a', '{"role":"authenticated"}',
  '[{"binding": 1, "event": "*", "schema": "public", "table": "todos", "filters": [{"column": "title", "op": "match", "value": "("}]}]');
select * from realtime._subscribe('00000000-0000-0000-0000-00000000000a', '{"role":"authenticated"}',
  '[{"binding": 1, "event": "*", "schema": "public", "table": "todos", "filters": [], "select": ["nope"]}]');

-- a role without any SELECT right on the table may not subscribe (changes would tell it
-- that rows exist)
select * from realtime._subscribe('00000000-0000-0000-0000-00000000000b', '{"role":"anon"}',
  '[{"binding": 13, "event": "*", "schema": "public", "table": "todos", "filters": [{"column": "id", "op": "eq", "value": "2"}]}]');

-- subscriptions: alice (everything), bob (INSERT of titles like %x%), nopk
select count(*) from (
  select * from realtime._subscribe('00000000-0000-0000-0000-00000000000a', '{"role":"authenticated","sub":"alice"}',
    '[{"binding": 11, "event": "*", "schema": "public", "table": "todos", "filters": []}]')
  union all
  select * from realtime._subscribe('00000000-0000-0000-0000-00000000000a', '{"role":"authenticated","sub":"bob"}',
    '[{"binding": 12, "event": "INSERT", "schema": "public", "table": "todos", "filters": [{"column": "title", "op": "like", "value": "%x%"}]}]')

  union all
  select * from realtime._subscribe('00000000-0000-0000-0000-00000000000b', '{"role":"authenticated"}',
    '[{"binding": 14, "event": "*", "schema": "public", "table": "nopk", "filters": []}]')) s;
select entity, action_filter, eq_column, eq_value from realtime.subscription order by id;

insert into todos values (1, 'alice', 'a', 's1'), (2, 'bob', 'x', 's2'), (3, 'alice', 'xx', 's3');
update todos set owner = 'bob' where id = 1;   -- out of alice's view
delete from todos where id = 3;                -- alice's row: she hears it
begin; insert into todos values (4, 'alice', 'rolled back', ''); rollback;
insert into nopk values (1);
select topic, payload::jsonb -> 'subscriptions' as subs, payload::jsonb #>> '{data,type}' as type,
       payload::jsonb #> '{data,record}' as record, payload::jsonb #> '{data,old_record}' as old_record,
       payload::jsonb #> '{data,errors}' as errors,
       jsonb_path_query_array(payload::jsonb, '$.data.columns[*].name') as columns
  from realtime._poll(:'epoch', :head, 100) where extension = 'postgres_changes' order by seq;

-- the writer's search_path cannot slip functions into the checks: a jsonb_populate_record
-- that would make bob's new row look like alice's row 7 is never called
select max(seq) as head from realtime.queue \gset
insert into todos values (7, 'alice', 'seven', '');
select max(seq) as head from realtime.queue \gset
create schema evil;
grant usage on schema evil to public;
create function evil.jsonb_populate_record(base anyelement, j jsonb) returns anyelement
  language plpgsql as $$ begin return pg_catalog.jsonb_populate_record(base, '{"id": 7}'); end $$;
set search_path = evil, pg_catalog, public;
insert into todos values (8, 'bob', 'not for alice', '');
reset search_path;
select payload::jsonb -> 'subscriptions' as subs, payload::jsonb #> '{data,record,id}' as id
  from realtime._poll(:'epoch', :head, 100) where extension = 'postgres_changes' order by seq;
drop schema evil cascade;
delete from todos where id in (7, 8);

-- a failing policy hides the change (WARNING) and never aborts the writer
create policy broken on todos as restrictive for select to authenticated using (1 / (id - id) = 1);
insert into todos values (7, 'alice', 'still written', '');
select count(*) as written from todos where id = 7;
drop policy broken on todos;

-- an eq filter on timestamptz matches whatever the writer's TimeZone; records read in UTC
create table events (id int primary key, at timestamptz);
grant select on events to authenticated;
select realtime.enable('events');
select count(*) from realtime._subscribe('00000000-0000-0000-0000-00000000000b', '{"role":"authenticated","sub":"carol"}',
  '[{"binding": 15, "event": "*", "schema": "public", "table": "events", "filters": [{"column": "at", "op": "eq", "value": "2026-01-01T00:00:00+00:00"}]}]');
select max(seq) as head from realtime.queue \gset
set timezone = 'Asia/Tokyo';
insert into events values (1, '2026-01-01 09:00:00+09'), (2, '2026-01-01 00:00:00+09');
reset timezone;
select payload::jsonb -> 'subscriptions' as subs, payload::jsonb #> '{data,record}' as record
  from realtime._poll(:'epoch', :head, 100) where extension = 'postgres_changes' order by seq;

-- unsubscribing and disabling
select realtime._unsubscribe('00000000-0000-0000-0000-00000000000a', array(select id from realtime.subscription));
select count(*) as left_for_other_sidecar from realtime.subscription;
select realtime.disable('todos');
select count(*) as triggers_left from pg_trigger where tgrelid = 'todos'::regclass;
select realtime._sweep_subscriptions('00000000-0000-0000-0000-00000000000b', '{}', '0 seconds');
select count(*) as swept from realtime.subscription;
drop view todo_view;
drop table todos, nopk, parts, events;
