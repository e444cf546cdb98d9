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
create function realtime.send(payload jsonb, event text, topic text, private boolean default true)
returns void
language plpgsql volatile
as $$
declare
    generated_id uuid := gen_random_uuid();
begin
    if jsonb_typeof(payload) = 'object' and not payload ? 'id' then
        payload := payload || jsonb_build_object('id', generated_id);
    end if;
    perform realtime._enqueue(topic, event, payload, private, generated_id);
exception when others then
    raise warning 'WarnSendingBroadcastMessage: %', sqlerrm;
end
$$;

-- send_binary: like send, with raw bytes (delivered as a binary frame; v1 clients skip it).
create function realtime.send_binary(payload bytea, event text, topic text, private boolean default true)
returns void
language plpgsql volatile
as $$
begin
    perform realtime._enqueue(topic, event, payload, private, gen_random_uuid());
exception when others then
    raise warning 'WarnSendingBroadcastMessage: %', sqlerrm;
end
$$;

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

-- The reader functions are for the sidecar's role only.
revoke execute on function realtime._poll(text, bigint, integer), realtime._position(),
    realtime._prune() from public;

-- _publish: a sidecar hands over, in order and in one statement, what its clients sent, so that
-- every other sidecar on the database delivers it too (`origin` delivered it to its own clients
-- already and skips these rows). Element i is binary when binary_payloads[i] is not null; a
-- presence diff is also recorded in realtime.presence_entries (sql/presence.sql).
create function realtime._publish(
    origin uuid, topics text[], privates boolean[], extensions text[], events text[],
    payloads jsonb[], binary_payloads bytea[])
returns void
language plpgsql volatile
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
revoke execute on function realtime._publish(uuid, text[], boolean[], text[], text[], jsonb[], bytea[])
    from public;
