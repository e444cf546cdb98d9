-- Private-channel authorization (Supabase semantics, docs/protocol.md §9.4).
--
-- Policies on realtime.messages decide who may use a private channel: a SELECT policy lets a
-- user join and receive (`extension` 'broadcast' or 'presence'), an INSERT policy lets them send
-- a broadcast or track presence. Policies see the channel as realtime.topic() and the user's JWT
-- through request.jwt.claims, exactly as PostgREST and Supabase set them.

-- Same columns as Supabase's table, so policies written for Supabase work unchanged. Its rows
-- never stay: an INSERT is a broadcast (see _messages_insert below), and the sidecar's probe
-- rows are always rolled back. UNLOGGED, because rows that never stay need no WAL.
create unlogged table realtime.messages (
    topic          text      not null,
    extension      text      not null,
    payload        jsonb,
    event          text,
    private        boolean   default false,
    updated_at     timestamp not null default now(),
    inserted_at    timestamp not null default now(),
    id             uuid      not null default gen_random_uuid(),
    binary_payload bytea,
    primary key (id, inserted_at),
    check (payload is null or binary_payload is null),
    -- A private send from SQL asks the caller's INSERT policies with a probe row this check
    -- refuses (extension/src/queue.rs): policies come first, so their verdict is known, and the
    -- row is never written — no transaction id, nothing to roll back.
    constraint realtime_send_probe
        check (pg_catalog.current_setting('realtime.authorizing', true) is distinct from 'send')
);
alter table realtime.messages enable row level security;
-- Row access is decided by policies alone (none: nobody but the owner sees or inserts a row).
grant select, insert, update on realtime.messages to public;

-- An INSERT into realtime.messages broadcasts its 'broadcast' rows, as Supabase streams them:
-- channel `topic` (private iff `private`), event `event`, payload `payload` or `binary_payload`,
-- meta.id = the row's id. It runs after the INSERT policies accepted the rows and delivers at
-- commit like realtime.send(); then the rows are removed, so the table stays empty. Probe rows
-- of _authorize (which sets realtime.authorizing) are left alone: they are read back, then
-- rolled back.
create function realtime._messages_insert()
returns trigger
language plpgsql volatile security definer
set search_path = pg_catalog
as $$
declare
    m record;
begin
    for m in select * from realtime_inserted loop
        if m.extension = 'broadcast' then
            if m.binary_payload is not null then
                perform realtime._enqueue(m.topic, coalesce(m.event, ''), m.binary_payload,
                                          coalesce(m.private, false), m.id);
            else
                perform realtime._enqueue(m.topic, coalesce(m.event, ''), coalesce(m.payload, '{}'),
                                          coalesce(m.private, false), m.id);
            end if;
        end if;
    end loop;
    delete from realtime.messages t using realtime_inserted i
     where t.id = i.id and t.inserted_at = i.inserted_at;
    return null;
end
$$;
revoke execute on function realtime._messages_insert() from public;
create trigger realtime_messages_insert after insert on realtime.messages
    referencing new table as realtime_inserted
    for each statement
    when (pg_catalog.current_setting('realtime.authorizing', true) is distinct from 'on')
    execute function realtime._messages_insert();

-- _authorize_probes: inserts the two probe rows of an authorization (as the extension's owner,
-- so the sidecar needs no right on the table) and returns their ids. Only inside _authorize
-- (realtime.authorizing set), whose enclosing block always rolls them back.
create function realtime._authorize_probes(_topic text, out broadcast_probe uuid, out presence_probe uuid)
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    if current_setting('realtime.authorizing', true) is distinct from 'on' then
        raise exception 'realtime._authorize_probes is only for realtime._authorize'
            using errcode = 'insufficient_privilege';
    end if;
    insert into realtime.messages (topic, extension) values (_topic, 'broadcast')
        returning id into broadcast_probe;
    insert into realtime.messages (topic, extension) values (_topic, 'presence')
        returning id into presence_probe;
end
$$;

-- _authorize: what `_role` with `_claims` may do on private channel `_topic`. Runs as the
-- sidecar's database user (SET ROLE is not allowed in a SECURITY DEFINER function), which must
-- be allowed to SET ROLE to `_role` (realtime_sidecar is made a member of the token roles).
--
-- Probe rows for 'broadcast' and 'presence' are inserted (by _authorize_probes), then, as
-- `_role`, read back (SELECT policies → *_read) and inserted again (INSERT policies → *_write;
-- SQLSTATE 42501 means denied). Everything happens inside a block that always ends in an
-- exception, so the probes, the role and the settings are rolled back before the function
-- returns; the verdicts survive in the OUT variables. A role that does not exist raises 28000;
-- a superuser role, which would pass every policy, is refused with 42501.
create function realtime._authorize(
    _role text, _claims jsonb, _topic text, _headers jsonb,
    out broadcast_read boolean, out broadcast_write boolean,
    out presence_read boolean, out presence_write boolean)
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    broadcast_probe uuid;
    presence_probe uuid;
begin
    if not exists (select from pg_catalog.pg_roles where rolname = _role) then
        raise exception 'role "%" does not exist', _role using errcode = 'invalid_authorization_specification';
    end if;
    if exists (select from pg_catalog.pg_roles where rolname = _role and rolsuper) then
        raise exception 'role "%" may not be used by a client: it is a superuser', _role
            using errcode = 'insufficient_privilege';
    end if;
    begin
        perform pg_catalog.set_config('realtime.authorizing', 'on', true),
                pg_catalog.set_config('realtime.topic', _topic, true),
                pg_catalog.set_config('request.jwt.claims', _claims::text, true),
                pg_catalog.set_config('request.jwt.claim.sub', coalesce(_claims ->> 'sub', ''), true),
                pg_catalog.set_config('request.jwt.claim.role', coalesce(_claims ->> 'role', ''), true),
                pg_catalog.set_config('request.headers', _headers::text, true);
        select p.broadcast_probe, p.presence_probe into broadcast_probe, presence_probe
          from realtime._authorize_probes(_topic) p;

        -- Policies resolve names with the default search path, as they would for the user.
        perform pg_catalog.set_config('search_path', '"$user", public, pg_temp', true);
        perform pg_catalog.set_config('role', _role, true);
        select coalesce(bool_or(m.id = broadcast_probe), false),
               coalesce(bool_or(m.id = presence_probe), false)
          into broadcast_read, presence_read
          from realtime.messages m
         where m.topic = _topic and m.id in (broadcast_probe, presence_probe);
        begin
            insert into realtime.messages (topic, extension) values (_topic, 'broadcast');
            broadcast_write := true;
        exception when insufficient_privilege then
            broadcast_write := false;
        end;
        begin
            insert into realtime.messages (topic, extension) values (_topic, 'presence');
            presence_write := true;
        exception when insufficient_privilege then
            presence_write := false;
        end;
        raise exception using errcode = 'PRTRB';
    exception when sqlstate 'PRTRB' then
        -- Rolled back: probes, role and settings are gone; the verdicts remain.
    end;
end
$$;
