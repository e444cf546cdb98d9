-- RLS checks of Postgres Changes share one executor per role and statement, rescanned per
-- (role, claims) group (extension/src/rls.rs). Every policy shape below must give each group
-- its own answer in one multi-row statement — never an answer cached for the group before.
\set VERBOSITY terse
select epoch from realtime._position() \gset
select coalesce(max(seq), 0) as head from realtime.queue \gset

create table members (room int, user_id text, primary key (room, user_id));
insert into members values (1, 'u1'), (1, 'u2'), (2, 'u2'), (2, 'u3'), (3, 'u4');
create table part_members (user_id text, room int) partition by list (user_id);
create table part_members_a partition of part_members for values in ('u1', 'u2');
create table part_members_b partition of part_members default;
insert into part_members select user_id, room from members;
create function my_rooms() returns setof int language sql stable
  as $$ select room from members where user_id = current_setting('request.jwt.claims', true)::jsonb ->> 'sub' $$;
grant select on members, part_members to authenticated, anon;
create table msgs (id int primary key, room int, body text);
grant select on msgs to authenticated, anon;
alter table msgs enable row level security;
select realtime.enable('msgs');

-- u1..u5 (authenticated) and a guest (anon), one sidecar
select count(*) from generate_series(1, 5) i,
  realtime._subscribe('00000000-0000-0000-0000-00000000000c',
    jsonb_build_object('role', 'authenticated', 'sub', 'u' || i, 'n', case when i = 3 then 'x' else '1' end),
    '[{"binding": 1, "event": "*", "schema": "public", "table": "msgs", "filters": []}]');
select count(*) from realtime._subscribe('00000000-0000-0000-0000-00000000000c',
  '{"role": "anon", "sub": "guest"}', '[{"binding": 1, "event": "*", "schema": "public", "table": "msgs", "filters": []}]');

-- who heard which rows since the last call
create function heard(_epoch text, _after bigint) returns table (sub text, type text, ids int[])
language sql as $$
  select s.claims ->> 'sub', p #>> '{data,type}',
         array_agg(coalesce(p #>> '{data,record,id}', p #>> '{data,old_record,id}')::int order by q.seq)
    from realtime._poll(_epoch, _after, 1000) q
    cross join lateral (select q.payload::jsonb) j(p)
    cross join lateral jsonb_array_elements_text(p -> 'subscriptions') sid
    join realtime.subscription s on s.id = sid::bigint
   where q.extension = 'postgres_changes'
   group by 1, 2 order by 1, 2
$$;

-- members: room 1 u1 u2, room 2 u2 u3, room 3 u4; u5 and guest nowhere. A DEBUG line shows
-- when a check cannot share its executor.
set client_min_messages = debug1;
-- 1. an InitPlan (the `(select auth.uid())` habit) feeding a hashed IN subquery
create policy p on msgs for select to authenticated using (room in (
  select m.room from members m where m.user_id = (select current_setting('request.jwt.claims', true)::jsonb ->> 'sub')));
insert into msgs values (1, 1, ''), (2, 2, ''), (3, 3, '');
select * from heard(:'epoch', :head);
select max(seq) as head from realtime.queue \gset

-- 2. a correlated EXISTS; an UPDATE moving row 1 from room 1 to room 3
drop policy p on msgs;
create policy p on msgs for select to authenticated using (exists (
  select 1 from members m where m.room = msgs.room and m.user_id = current_setting('request.jwt.claims', true)::jsonb ->> 'sub'));
update msgs set room = 3 where id = 1;
update msgs set room = 1 where id = 1;
select * from heard(:'epoch', :head);
select max(seq) as head from realtime.queue \gset

-- 3. a set-returning function reading the claims
drop policy p on msgs;
create policy p on msgs for select to authenticated using (room in (select my_rooms()));
delete from msgs where id in (1, 2, 3);
select * from heard(:'epoch', :head);
select max(seq) as head from realtime.queue \gset

-- 4. a partitioned membership table pruned by the claims: pruning decided at executor start,
-- so each group gets a fresh executor (the DEBUG line)
drop policy p on msgs;
create policy p on msgs for select to authenticated using (exists (
  select 1 from part_members m where m.room = msgs.room and m.user_id = current_setting('request.jwt.claims', true)::jsonb ->> 'sub'));
insert into msgs values (1, 1, ''), (2, 2, ''), (3, 3, '');
select * from heard(:'epoch', :head);
select max(seq) as head from realtime.queue \gset

-- 5. a qual on the claims alone (a one-time filter), and a join inside the policy
drop policy p on msgs;
create policy p on msgs for select to authenticated using (
  current_setting('request.jwt.claims', true)::jsonb ->> 'sub' in ('u1', 'u3')
  or exists (select 1 from members m join members m2 on m2.room = m.room
              where m.user_id = current_setting('request.jwt.claims', true)::jsonb ->> 'sub'
                and m2.user_id = 'u4' and m.room = msgs.room));
create policy guests on msgs for select to anon using (room = 2);
update msgs set body = 'edited';
select * from heard(:'epoch', :head);
select max(seq) as head from realtime.queue \gset

-- 6. a policy failing for one group (u3's claim `n` is not a number): only that group misses
-- the change, with a WARNING
drop policy p on msgs;
create policy p on msgs for select to authenticated using ((current_setting('request.jwt.claims', true)::jsonb ->> 'n')::int > 0);
insert into msgs values (4, 1, '');
select * from heard(:'epoch', :head);
select max(seq) as head from realtime.queue \gset

-- 7. a materialized CTE and an aggregate inside the policy
drop policy p on msgs;
create policy p on msgs for select to authenticated using (
  room in (with mine as materialized (
             select m.room from members m where m.user_id = current_setting('request.jwt.claims', true)::jsonb ->> 'sub')
           select room from mine)
  and (select count(*) from members m where m.user_id = current_setting('request.jwt.claims', true)::jsonb ->> 'sub') >= 1);
insert into msgs values (5, 1, ''), (6, 2, ''), (7, 3, '');
select * from heard(:'epoch', :head);

-- 8. a statement timeout while checking is not a failing policy: it ends the writer's statement
drop policy p on msgs;
create policy p on msgs for select to authenticated using (pg_sleep(0.3) is not null);
set statement_timeout = '100ms';
insert into msgs values (8, 1, '');
reset statement_timeout;
select count(*) as written from msgs where id = 8;

reset client_min_messages;
select realtime._unsubscribe('00000000-0000-0000-0000-00000000000c', array(select id from realtime.subscription));
drop table msgs, members, part_members;
drop function my_rooms(), heard(text, bigint);
