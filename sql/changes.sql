-- Postgres Changes: capture on enabled tables, subscriptions with typed filters, and the
-- per-statement routing that decides (in the writer's transaction) who may see each change.
--
-- Client-supplied names and values never become SQL text: columns are resolved against the
-- catalog and quoted with %I, tables are regclass values, filter values travel as parameters
-- and reach their column type through jsonb_populate_record (the type's own input function).

-- One row per binding (one `postgres_changes` entry of one joined channel) of one sidecar.
create unlogged table realtime.subscription (
    id               bigint      generated always as identity primary key,
    sidecar          uuid        not null,
    binding          bigint      not null,
    entity           regclass    not null,
    action_filter    text        not null default '*'
                                 check (action_filter in ('*', 'INSERT', 'UPDATE', 'DELETE')),
    -- [{"column", "op", "negate", "value" | "values"}], validated by _subscribe; all of the
    -- binding's filters but the one matched through eq_column / eq_value
    filters          jsonb       not null default '[]',
    claims           jsonb       not null,
    claims_role      name        not null,
    selected_columns text[],
    -- The first `eq` condition, for indexed matching: the column and its value as the column's
    -- to_jsonb (what to_jsonb(row) -> column gives for an equal value; both are rendered with
    -- TimeZone UTC).
    eq_column        text,
    eq_value         jsonb,
    created_at       timestamptz not null default now()
);
create index on realtime.subscription (entity, eq_column, eq_value);
create index on realtime.subscription (sidecar);

revoke all on realtime.subscription from public;

-- Capture is three statement-level triggers with transition tables: one call per statement,
-- however many rows it touches. The trigger argument records why the table is captured
-- ('enable' or 'publication'), so leaving the publication does not undo an explicit enable().
create function realtime._capture_source(entity regclass)
returns text
language sql stable
as $$
    select encode(substring(t.tgargs from 1 for length(t.tgargs) - 1), 'escape')
      from pg_catalog.pg_trigger t
     where t.tgrelid = entity and t.tgname = 'realtime_capture_insert'
$$;

create function realtime._capture_on(entity regclass, source text)
returns void
language plpgsql volatile
as $$
declare
    kind "char";
    current_source text := realtime._capture_source(entity);
begin
    select relkind into kind from pg_catalog.pg_class where oid = entity;
    if kind in ('v', 'm') then
        raise exception 'cannot capture changes of %: it is a view', entity
            using hint = 'Enable the tables the view reads from; a view has no changes of its own.',
                  errcode = 'wrong_object_type';
    elsif kind not in ('r', 'p') then
        raise exception 'cannot capture changes of %: not a table', entity
            using errcode = 'wrong_object_type';
    elsif exists (select from pg_catalog.pg_class where oid = entity and relispartition) then
        raise exception 'cannot capture changes of %: it is a partition', entity
            using hint = 'Enable the partitioned table: its changes are reported under it.',
                  errcode = 'wrong_object_type';
    end if;
    if current_source = source or (current_source = 'enable' and source = 'publication') then
        return;
    end if;
    if current_source is not null then
        perform realtime._capture_off(entity);
    end if;
    execute format('create trigger realtime_capture_insert after insert on %s '
                   'referencing new table as realtime_new for each statement '
                   'execute function realtime._capture(%L)', entity, source);
    execute format('create trigger realtime_capture_update after update on %s '
                   'referencing old table as realtime_old new table as realtime_new '
                   'for each statement execute function realtime._capture(%L)', entity, source);
    execute format('create trigger realtime_capture_delete after delete on %s '
                   'referencing old table as realtime_old for each statement '
                   'execute function realtime._capture(%L)', entity, source);
end
$$;

create function realtime._capture_off(entity regclass)
returns void
language plpgsql volatile
as $$
begin
    execute format('drop trigger if exists realtime_capture_insert on %s', entity);
    execute format('drop trigger if exists realtime_capture_update on %s', entity);
    execute format('drop trigger if exists realtime_capture_delete on %s', entity);
end
$$;

-- enable / disable: capture a table's changes for Postgres Changes subscribers. Only the table's
-- owner (or a member of its owning role) may, as for ALTER TABLE; the triggers are then created
-- by the extension (extension/src/changes.rs).
create function realtime.enable(entity regclass)
returns void
language c volatile strict
as 'MODULE_PATHNAME', 'enable_wrapper';

create function realtime.disable(entity regclass)
returns void
language c volatile strict
as 'MODULE_PATHNAME', 'disable_wrapper';

-- Tables in the supabase_realtime publication are captured too (the Supabase habit:
-- `alter publication supabase_realtime add table ...`); run after every publication DDL.
-- Runs as the extension's owner: ALTER PUBLICATION itself required ownership of the tables.
create function realtime._sync_publication()
returns event_trigger
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    entity regclass;
begin
    for entity in
        select distinct pg_catalog.pg_partition_root(pg_catalog.format('%I.%I', schemaname, tablename)::regclass)
          from pg_catalog.pg_publication_tables where pubname = 'supabase_realtime'
    loop
        perform realtime._capture_on(entity, 'publication');
    end loop;
    for entity in
        select t.tgrelid::regclass from pg_catalog.pg_trigger t
         where t.tgname = 'realtime_capture_insert'
           and realtime._capture_source(t.tgrelid) = 'publication'
           and t.tgrelid not in (
               select pg_catalog.pg_partition_root(pg_catalog.format('%I.%I', schemaname, tablename)::regclass)
                 from pg_catalog.pg_publication_tables where pubname = 'supabase_realtime')
    loop
        perform realtime._capture_off(entity);
    end loop;
end
$$;
create event trigger realtime_sync_publication on ddl_command_end
    when tag in ('CREATE PUBLICATION', 'ALTER PUBLICATION', 'DROP PUBLICATION')
    execute function realtime._sync_publication();

-- _subscribe: validate and store the bindings of one channel of sidecar `_sidecar`, for a user
-- with `_claims`. `_bindings`: [{"binding", "event", "schema", "table", "filters", "select"}]
-- as parsed by the sidecar. Returns (binding, subscription id) pairs (a wildcard binding covers
-- several tables); any problem raises with a message meant for the client.
--
-- Runs as the extension's owner, for the sidecar's role only. What it refuses:
-- * a role that does not exist or is a superuser (its checks would bypass every policy);
-- * a table the role may not select from at all, a filter on a column it may not select (the
--   rows that arrive would reveal the column's values), and, on a table with row-level
--   security, a table without a primary key or with one the role may not select (its changes
--   could not be checked against the policies);
-- * a condition over 64 KiB, more than pg_realtime.max_filter_conditions conditions in one
--   binding, more than pg_realtime.max_subscriptions_per_table subscriptions on one table and
--   more than pg_realtime.max_subscriptions in the database.
-- Filter values are cast to the column's type, and operators resolved, by _filter_check as the
-- table's owner, security-restricted (extension/src/filter.rs).
create function realtime._subscribe(_sidecar uuid, _claims jsonb, _bindings jsonb)
returns table (out_binding bigint, out_subscription bigint)
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    b jsonb;
    cond jsonb;
    _entity regclass;
    entities regclass[];
    col text;
    eq_col text;
    eq_val jsonb;
    checked jsonb;
    rest jsonb;
    _role text := _claims ->> 'role';
    sub_id bigint;
    max_conditions int := current_setting('pg_realtime.max_filter_conditions')::int;
    max_per_table int := current_setting('pg_realtime.max_subscriptions_per_table')::int;
    max_total int := current_setting('pg_realtime.max_subscriptions')::int;
    pk_selectable boolean;
begin
    if not exists (select from pg_catalog.pg_roles where rolname = _role) then
        raise exception 'role "%" does not exist', _role using errcode = 'invalid_authorization_specification';
    end if;
    if exists (select from pg_catalog.pg_roles where rolname = _role and rolsuper) then
        raise exception 'role "%" may not subscribe: it is a superuser', _role
            using errcode = 'insufficient_privilege';
    end if;
    for b in select * from jsonb_array_elements(_bindings) loop
        if jsonb_array_length(coalesce(b -> 'filters', '[]')) > max_conditions then
            raise exception 'Unable to subscribe to changes with given parameters: at most % filter conditions per subscription', max_conditions
                using errcode = 'program_limit_exceeded';
        end if;
        entities := array(
            select t.tgrelid::regclass
              from pg_catalog.pg_trigger t
              join pg_catalog.pg_class c on c.oid = t.tgrelid
              join pg_catalog.pg_namespace n on n.oid = c.relnamespace
             where t.tgname = 'realtime_capture_insert'
               and (b ->> 'schema' = '*' or n.nspname = b ->> 'schema')
               and (b ->> 'table' = '*' or c.relname = b ->> 'table')
             order by t.tgrelid);
        if cardinality(entities) = 0 then
            raise exception 'Unable to subscribe to changes with given parameters. Please check Realtime is enabled for the given connect parameters: [schema: %, table: %, filters: %]',
                b ->> 'schema', b ->> 'table', b -> 'filters'
                using errcode = 'undefined_table';
        end if;
        foreach _entity in array entities loop
            if not has_any_column_privilege(_role, _entity, 'SELECT') then
                raise exception 'Unable to subscribe to changes with given parameters: permission denied for table %', _entity
                    using errcode = 'insufficient_privilege';
            end if;
            if (select relrowsecurity from pg_catalog.pg_class where oid = _entity) then
                select bool_and(has_column_privilege(_role, _entity, a.attnum, 'SELECT'))
                  into pk_selectable
                  from pg_catalog.pg_index i
                  join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey::int2[])
                 where i.indrelid = _entity and i.indisprimary;
                if pk_selectable is null then
                    raise exception 'Unable to subscribe to changes with given parameters: % has row level security and no primary key, so its changes cannot be checked against its policies', _entity
                        using errcode = 'feature_not_supported';
                elsif not pk_selectable then
                    raise exception 'Unable to subscribe to changes with given parameters: % has row level security and role "%" may not select its primary key', _entity, _role
                        using errcode = 'insufficient_privilege';
                end if;
            end if;
            if (select count(*) from (select from realtime.subscription s where s.entity = _entity
                                       limit max_per_table) x) >= max_per_table then
                raise exception 'Unable to subscribe to changes with given parameters: too many subscriptions on % (at most %)', _entity, max_per_table
                    using errcode = 'program_limit_exceeded';
            end if;
            if (select count(*) from (select from realtime.subscription limit max_total) x) >= max_total then
                raise exception 'Unable to subscribe to changes with given parameters: too many subscriptions in the database (at most %)', max_total
                    using errcode = 'program_limit_exceeded';
            end if;
            eq_col := null;
            eq_val := null;
            rest := '[]';
            for cond in select * from jsonb_array_elements(b -> 'filters') loop
                col := cond ->> 'column';
                -- Values are evaluated in every writing statement on the table: bounded.
                if pg_catalog.octet_length(cond::text) > 65536 then
                    raise exception 'Error parsing `filter` params: a filter condition may be at most 64 KiB'
                        using errcode = 'program_limit_exceeded';
                end if;
                if not exists (select from pg_catalog.pg_attribute
                                where attrelid = _entity and attname = col and attnum > 0 and not attisdropped) then
                    raise exception 'Error parsing `filter` params: column "%" does not exist in %', col, _entity
                        using errcode = 'undefined_column';
                end if;
                if not has_column_privilege(_role, _entity, col, 'SELECT') then
                    raise exception 'Unable to subscribe to changes with given parameters: permission denied for column "%" of %', col, _entity
                        using errcode = 'insufficient_privilege';
                end if;
                -- Casts the value(s) to the column type and resolves the operator, as the
                -- table's owner, or raises; the value as rendered for an indexed eq.
                checked := realtime._filter_check(_entity, cond);
                if eq_col is null and checked is not null then
                    eq_col := col;
                    eq_val := checked;
                else
                    rest := rest || jsonb_build_array(cond);
                end if;
            end loop;
            for col in select jsonb_array_elements_text(coalesce(b -> 'select', '[]')) loop
                if not exists (select from pg_catalog.pg_attribute
                                where attrelid = _entity and attname = col and attnum > 0 and not attisdropped) then
                    raise exception 'column "%" of select does not exist in %', col, _entity
                        using errcode = 'undefined_column';
                end if;
            end loop;
            insert into realtime.subscription
                (sidecar, binding, entity, action_filter, filters, claims, claims_role,
                 selected_columns, eq_column, eq_value)
            values (_sidecar, (b ->> 'binding')::bigint, _entity, b ->> 'event', rest,
                    _claims, _role,
                    case when b ? 'select' and jsonb_typeof(b -> 'select') = 'array'
                         then array(select jsonb_array_elements_text(b -> 'select')) end,
                    eq_col, eq_val)
            returning id into sub_id;
            out_binding := (b ->> 'binding')::bigint;
            out_subscription := sub_id;
            return next;
        end loop;
    end loop;
    perform realtime._subscriptions_changed();
end
$$;

-- _unsubscribe: forget subscriptions of `_sidecar` (leave, token refresh, channel closed).
create function realtime._unsubscribe(_sidecar uuid, ids bigint[])
returns void
language sql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
    delete from realtime.subscription where sidecar = _sidecar and id = any(ids);
    select realtime._subscriptions_changed();
$$;

-- _sweep_subscriptions: drop the subscriptions of `_sidecar` it no longer serves (`live`); rows
-- younger than `grace` are kept, as their channel may not have registered them yet.
create function realtime._sweep_subscriptions(_sidecar uuid, live bigint[], grace interval)
returns void
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    delete from realtime.subscription
     where sidecar = _sidecar and not (id = any(live)) and created_at < now() - grace;
    if found then
        perform realtime._subscriptions_changed();
    end if;
end
$$;

revoke execute on function realtime._sweep_subscriptions(uuid, bigint[], interval) from public;
revoke execute on function realtime._subscribe(uuid, jsonb, jsonb), realtime._unsubscribe(uuid, bigint[]),
    realtime._subscriptions_changed() from public;
