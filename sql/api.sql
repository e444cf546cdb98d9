-- The public SQL API of pg_realtime. Hot paths are the Rust functions realtime._enqueue (buffer
-- until commit) and realtime._poll / realtime._position (the sidecar's reader).

-- broadcast: deliver `payload` as broadcast `event` to subscribers of channel `topic`
-- (`realtime:<topic>` on the client), if and when the calling transaction commits.
create function realtime.broadcast(topic text, event text, payload jsonb, private boolean default false)
returns void
language c volatile parallel unsafe
as 'MODULE_PATHNAME', 'broadcast_wrapper';

-- send: Supabase-compatible. Adds a generated uuid to the payload as `id` (unless it has one),
-- delivers it as meta.id, and is private by default. Errors become a WARNING, as in Supabase,
-- so a trigger that calls it never aborts the user's write.
--
-- broadcast, send and send_binary to a PRIVATE channel obey the caller's INSERT policies on
-- realtime.messages (extension 'broadcast', the topic in realtime.topic()), exactly as a socket
-- send does; roles that bypass row-level security there (superusers, BYPASSRLS roles, the table's
-- owner) are not checked, as PostgreSQL would not check them. Public messages need no policy.
create function realtime.send(payload jsonb, event text, topic text, private boolean default true)
returns void
language c volatile parallel unsafe
as 'MODULE_PATHNAME', 'send_wrapper';

-- send_binary: like send, with raw bytes (delivered as a binary frame; v1 clients skip it).
create function realtime.send_binary(payload bytea, event text, topic text, private boolean default true)
returns void
language c volatile parallel unsafe
as 'MODULE_PATHNAME', 'send_binary_wrapper';

-- broadcast_changes: Supabase-compatible helper for row-level triggers.
create function realtime.broadcast_changes(
    topic_name text, event_name text, operation text, table_name text, table_schema text,
    new record, old record, level text default 'ROW')
returns void
language plpgsql volatile
as $$
begin
    if level = 'STATEMENT' then
        raise exception 'function can only be triggered for each row, not for each statement';
    end if;
    if operation not in ('INSERT', 'UPDATE', 'DELETE') then
        raise exception 'unexpected operation type: %', operation;
    end if;
    perform realtime.send(
        jsonb_build_object('old_record', old, 'record', new, 'operation', operation,
                           'table', table_name, 'schema', table_schema),
        event_name, topic_name);
end
$$;

-- topic: the channel being authorized, for policies on realtime.messages.
create function realtime.topic() returns text
language sql stable
as $$ select nullif(current_setting('realtime.topic', true), '')::text $$;


-- _publish: a sidecar hands over, in order and in one statement, what its clients sent, so that
-- every other sidecar on the database delivers it too (`origin` delivered it to its own clients
-- already and skips these rows). Element i is binary when binary_payloads[i] is not null; a
-- presence diff is also recorded in realtime.presence_entries (sql/presence.sql).
create function realtime._publish(
    origin uuid, topics text[], privates boolean[], extensions text[], events text[],
    payloads jsonb[], binary_payloads bytea[])
returns void
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    for i in 1 .. coalesce(array_length(topics, 1), 0) loop
        if extensions[i] = 'presence' then
            perform realtime._presence_record(origin, topics[i], privates[i], payloads[i]);
        end if;
        if binary_payloads[i] is not null then
            perform realtime._enqueue(topics[i], events[i], binary_payloads[i], privates[i], null,
                                      origin, extensions[i]);
        else
            perform realtime._enqueue(topics[i], events[i], payloads[i], privates[i], null,
                                      origin, extensions[i]);
        end if;
    end loop;
end
$$;

-- Internal functions: nobody but the extension's owner and the sidecar's role may call them.
-- Those written in Rust get the same pinned search_path as the SQL ones.
alter function realtime._poll(text, bigint, integer) set search_path = pg_catalog, pg_temp;
alter function realtime._position() set search_path = pg_catalog, pg_temp;
alter function realtime._prune() set search_path = pg_catalog, pg_temp;
do $$
declare
    f regprocedure;
begin
    for f in
        select p.oid::regprocedure from pg_catalog.pg_proc p
         where p.pronamespace = 'realtime'::regnamespace and p.proname like '\_%'
    loop
        execute pg_catalog.format('revoke execute on function %s from public', f);
    end loop;
end
$$;
grant execute on function
    realtime._poll(text, bigint, integer), realtime._position(),
    realtime._publish(uuid, text[], boolean[], text[], text[], jsonb[], bytea[]),
    realtime._enqueue(text, text, anyelement, boolean, uuid, uuid, text),
    realtime._subscribe(uuid, jsonb, jsonb), realtime._unsubscribe(uuid, bigint[]),
    realtime._sweep_subscriptions(uuid, bigint[], interval),
    realtime._authorize(text, jsonb, text, jsonb), realtime._authorize_probes(text),
    realtime._presence_heartbeat(uuid, interval), realtime._presence_remove(uuid[])
    to realtime_sidecar;
grant select on realtime.presence_entries to realtime_sidecar;
-- The sidecar SETs ROLE to the roles tokens carry: those that exist now (others: grant by hand).
do $$
declare
    r name;
begin
    for r in
        select rolname from pg_catalog.pg_roles
         where rolname in ('anon', 'authenticated', 'service_role') and not rolsuper
    loop
        execute pg_catalog.format('grant %I to realtime_sidecar', r);
    end loop;
end
$$;
