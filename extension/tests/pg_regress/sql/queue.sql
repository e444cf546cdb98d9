-- The SQL surface of the queue: what a sidecar reads through realtime._poll, and when.
\set VERBOSITY terse
select epoch, head from realtime._position() \gset

-- test_visible_only_after_commit
begin;
select realtime.broadcast('room1', 'greeting', '{"n": 1}');
select realtime._pending() as pending_in_txn;
select count(*) as visible_before_commit from realtime._poll(:'epoch', :head, 100);
commit;
select seq > :head as after_head, topic, private, event, payload, binary_payload, msg_id
  from realtime._poll(:'epoch', :head, 100);
select max(seq) as head from realtime.queue \gset

-- test_rollback_delivers_nothing
begin;
select realtime.broadcast('room1', 'lost', '{}');
rollback;
select count(*) as after_rollback from realtime._poll(:'epoch', :head, 100);

-- test_savepoint_rollback_drops_only_that_part
begin;
select realtime.broadcast('room1', 'kept-1', '{}');
savepoint s;
select realtime.broadcast('room1', 'dropped', '{}');
rollback to savepoint s;
select realtime.broadcast('room1', 'kept-2', '{}');
savepoint t;
select realtime.broadcast('room1', 'kept-3', '{}');
release savepoint t;
commit;
select event from realtime._poll(:'epoch', :head, 100) order by seq;
select max(seq) as head from realtime.queue \gset

-- test_order_within_a_transaction
begin;
select realtime.broadcast('order', 'e', jsonb_build_object('i', i)) from generate_series(1, 5) i;
commit;
select string_agg(payload::jsonb->>'i', ',' order by seq) as order_seen
  from realtime._poll(:'epoch', :head, 100);
select max(seq) as head from realtime.queue \gset

-- test_max_rows_limits_one_poll
select count(*) as first_page from realtime._poll(:'epoch', :head - 5, 2);

-- test_send_adds_id_and_is_private_by_default
select realtime.send('{"text": "hi"}', 'msg', 'room1');
select realtime.send('{"id": "mine"}', 'msg', 'room1', false);
select private, payload::jsonb->>'text' as text,
       (payload::jsonb->>'id') = msg_id as payload_id_is_meta_id,
       (payload::jsonb->>'id') = 'mine' as kept_own_id, msg_id is not null as has_meta_id
  from realtime._poll(:'epoch', :head, 100) order by seq;
select max(seq) as head from realtime.queue \gset

-- test_send_never_aborts_the_caller (empty topic: warning, transaction goes on)
select realtime.send('{}', 'msg', '');
select count(*) as nothing_queued from realtime._poll(:'epoch', :head, 100);

-- test_send_binary
select realtime.send_binary('\x010203'::bytea, 'bin', 'room1', false);
select payload, binary_payload from realtime._poll(:'epoch', :head, 100);
select max(seq) as head from realtime.queue \gset

-- test_broadcast_changes_from_a_trigger
create table todos (id int primary key, title text);
create function todos_broadcast() returns trigger language plpgsql as $$
begin
  perform realtime.broadcast_changes('todos:' || coalesce(new.id, old.id)::text, tg_op, tg_op,
                                     tg_table_name, tg_table_schema, new, old);
  return null;
end $$;
create trigger todos_broadcast after insert or update or delete on todos
  for each row execute function todos_broadcast();
insert into todos values (1, 'write tests');
update todos set title = 'run tests' where id = 1;
delete from todos where id = 1;
select topic, event, private, payload::jsonb - 'id' as payload
  from realtime._poll(:'epoch', :head, 100) order by seq;
select max(seq) as head from realtime.queue \gset

-- test_broadcast_changes_rejects_statement_level
select realtime.broadcast_changes('t', 'e', 'INSERT', 'todos', 'public', null::todos, null::todos, 'STATEMENT');
select realtime.broadcast_changes('t', 'e', 'TRUNCATE', 'todos', 'public', null::todos, null::todos);

-- test_bad_input
select realtime.broadcast('', 'e', '{}');
select realtime.broadcast('t', 'e', null);
select realtime._enqueue('t', 'e', 42, false, null);

-- test_large_payload_is_not_limited_by_notify
select realtime.broadcast('big', 'e', jsonb_build_object('blob', repeat('x', 200000)));
select length(payload::jsonb->>'blob') as blob_length from realtime._poll(:'epoch', :head, 100);
select max(seq) as head from realtime.queue \gset

-- test_publish_from_a_sidecar (in order, origin and extension kept, binary or JSON per element)
select realtime._publish('00000000-0000-0000-0000-00000000000a',
                         array['r1', 'r2', 'r1'], array[false, true, false],
                         array['broadcast', 'presence', 'broadcast'], array['e1', 'presence_diff', 'e3'],
                         array['{"n": 1}', '{"joins": {}, "leaves": {}}', null]::jsonb[],
                         array[null, null, '\x0a0b']::bytea[]);
select topic, private, extension, event, payload, binary_payload, msg_id, origin
  from realtime._poll(:'epoch', :head, 100) order by seq;
select max(seq) as head from realtime.queue \gset
select realtime._enqueue('t', 'e', '{}'::jsonb, false, null, null, 'replication');
select realtime._publish('00000000-0000-0000-0000-00000000000a', '{}', '{}', '{}', '{}', '{}', '{}');
select count(*) as nothing_published from realtime._poll(:'epoch', :head, 100);

-- test_epoch_change_reads_from_the_start
select count(*) > 0 as unknown_epoch_reads_all from realtime._poll('not-the-epoch', :head, 100);

-- test_topic
select realtime.topic() is null as no_topic;
set realtime.topic = 'room1';
select realtime.topic();
reset realtime.topic;

-- test_prepare_is_refused
begin;
select realtime.broadcast('t', 'e', '{}');
prepare transaction 'p';

-- test_pruning (retention 0: everything but the newest row goes)
set pg_realtime.queue_retention = 0;
select realtime._prune() > 0 as pruned;
select count(*) as rows_left from realtime.queue;
reset pg_realtime.queue_retention;
set pg_realtime.queue_max_rows = 2;
select realtime.broadcast('cap', 'e', jsonb_build_object('i', i)) from generate_series(1, 5) i;
select realtime._prune() as pruned_by_cap;
select string_agg(payload::jsonb->>'i', ',' order by seq) as kept from realtime.queue;
reset pg_realtime.queue_max_rows;

-- test_reader_functions_are_not_public
create role someone;
set role someone;
select * from realtime._poll(:'epoch', 0, 1);
select realtime._publish(null, '{}', '{}', '{}', '{}', '{}', '{}');
select realtime.broadcast('from-someone', 'e', '{}');
reset role;
select topic from realtime.queue where topic = 'from-someone';
drop role someone;
