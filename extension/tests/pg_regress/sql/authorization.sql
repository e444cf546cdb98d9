-- Private-channel authorization: realtime._authorize evaluates realtime.messages policies as
-- the user's role with their claims, topic and headers, and leaves nothing behind.
\pset null '(null)'
\set VERBOSITY terse

-- A Supabase-style setup: membership decides who may read and write which room.
create table public.room_members (room text not null, user_id text not null);
insert into public.room_members values ('room1', 'alice'), ('room1', 'bob'), ('room2', 'carol');
grant select on public.room_members to authenticated;

create policy "members receive" on realtime.messages for select to authenticated
  using (exists (select 1 from public.room_members m
                 where m.room = realtime.topic()
                   and m.user_id = current_setting('request.jwt.claims', true)::jsonb ->> 'sub'));
create policy "alice sends" on realtime.messages for insert to authenticated
  with check (realtime.messages.extension = 'broadcast'
              and current_setting('request.jwt.claim.sub', true) = 'alice');
create policy "presence only" on realtime.messages for select to anon
  using (realtime.topic() = 'lobby' and extension = 'presence');
create policy "header check" on realtime.messages for select to anon
  using (realtime.topic() = 'kiosk'
         and current_setting('request.headers', true)::jsonb ->> 'x-kiosk' = 'yes');

-- Member with write access, member without, non-member, other room.
select * from realtime._authorize('authenticated', '{"sub":"alice","role":"authenticated"}', 'room1', '{}');
select * from realtime._authorize('authenticated', '{"sub":"bob","role":"authenticated"}', 'room1', '{}');
select * from realtime._authorize('authenticated', '{"sub":"carol","role":"authenticated"}', 'room1', '{}');
select * from realtime._authorize('authenticated', '{"sub":"carol","role":"authenticated"}', 'room2', '{}');
-- Policies are per role: anon has no policy on rooms, only presence in the lobby.
select * from realtime._authorize('anon', '{"sub":"alice","role":"anon"}', 'room1', '{}');
select * from realtime._authorize('anon', '{"role":"anon"}', 'lobby', '{}');
-- Request headers reach policies.
select * from realtime._authorize('anon', '{"role":"anon"}', 'kiosk', '{"x-kiosk":"yes"}');
select * from realtime._authorize('anon', '{"role":"anon"}', 'kiosk', '{"x-kiosk":"no"}');
-- A role with BYPASSRLS (service_role) sees everything, as in PostgREST; a superuser is refused.
select * from realtime._authorize('service_role', '{"role":"service_role"}', 'anything', '{}');
select * from realtime._authorize('postgres', '{"role":"postgres"}', 'anything', '{}');

-- Nothing is left behind: no probe rows, no settings, same role.
select count(*) as probe_rows from realtime.messages;
select current_user, realtime.topic() as topic,
       nullif(current_setting('request.jwt.claims', true), '') as claims;

-- A token role that is not a database role is refused with a clear error.
select * from realtime._authorize('no_such_role', '{"role":"no_such_role"}', 'room1', '{}');

-- A policy that fails is an error for the caller, not a verdict.
create policy "broken" on realtime.messages for select to anon
  using (realtime.topic() = 'broken' and 1 / 0 = 1);
select * from realtime._authorize('anon', '{"role":"anon"}', 'broken', '{}');
drop policy "broken" on realtime.messages;

-- Topic and claims are values, never SQL: quotes and injections are just text.
select * from realtime._authorize('authenticated', '{"sub":"x''); drop table public.room_members; --"}',
                                  'room1''; drop table public.room_members; --', '{}');
select count(*) as members_still_there from public.room_members;

-- The function is for the sidecar only.
set role authenticated;
select * from realtime._authorize('authenticated', '{}', 'room1', '{}');
reset role;
-- Users may write policies against realtime.messages but cannot read it without one.
set role anon;
select count(*) from realtime.messages;
reset role;

-- An INSERT into realtime.messages is a broadcast at commit, like realtime.send(), with the row's
-- id as meta.id; presence rows are not; the table stays empty. Rolled-back and denied inserts
-- deliver nothing (bob may not write).
select epoch, coalesce((select max(seq) from realtime.queue), 0) as head from realtime._position() \gset
insert into realtime.messages (topic, extension, event, payload, private, id) values
  ('room1', 'broadcast', 'hello', '{"a": 1}', true, '00000000-0000-0000-0000-0000000000f1'),
  ('room1', 'presence', 'not sent', '{}', true, '00000000-0000-0000-0000-0000000000f2');
insert into realtime.messages (topic, extension, event, binary_payload, id)
  values ('lobby', 'broadcast', 'bytes', '\x0102', '00000000-0000-0000-0000-0000000000f3');
begin;
insert into realtime.messages (topic, extension, event, payload) values ('room1', 'broadcast', 'rolled back', '{}');
rollback;
set role authenticated;
select set_config('request.jwt.claim.sub', 'alice', false);
insert into realtime.messages (topic, extension, event, payload, private, id)
  values ('room1', 'broadcast', 'from alice', '{}', true, '00000000-0000-0000-0000-0000000000f4');
select set_config('request.jwt.claim.sub', 'bob', false);
insert into realtime.messages (topic, extension, event, payload, private) values ('room1', 'broadcast', 'from bob', '{}', true);
reset role;
select topic, private, extension, event, payload, binary_payload, msg_id
  from realtime._poll(:'epoch', :head, 100) order by seq;
select count(*) as rows_kept from realtime.messages;

drop policy "members receive" on realtime.messages;
drop policy "alice sends" on realtime.messages;
drop policy "presence only" on realtime.messages;
drop policy "header check" on realtime.messages;
drop table public.room_members;
