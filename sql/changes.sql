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

-- The SQL of one filter operator (a fixed list: never client text).
create function realtime._filter_sql(op text, negate boolean)
returns text
language sql immutable
as $$
    select case when negate then 'not ' else '' end || case op
        when 'eq' then '%1$s = %2$s'
        when 'neq' then '%1$s <> %2$s'
        when 'lt' then '%1$s < %2$s'
        when 'lte' then '%1$s <= %2$s'
        when 'gt' then '%1$s > %2$s'
        when 'gte' then '%1$s >= %2$s'
        when 'like' then '%1$s ~~ %2$s'
        when 'ilike' then '%1$s ~~* %2$s'
        when 'match' then '%1$s::text ~ %2$s::text'
        when 'imatch' then '%1$s::text ~* %2$s::text'
        when 'in' then '%1$s = any(%3$s)'
        when 'isdistinct' then '%1$s is distinct from %2$s'
        when 'is' then '%1$s is %4$s'
    end
$$;

-- _filter_passes: does row image `rec` (to_jsonb of a row of `entity`) pass condition `cond`?
-- Both sides are values of the column's type: the row's from the image, the filter's through the
-- type's input function. Errors (a bad cast) propagate: _subscribe runs this once to validate.
create function realtime._filter_passes(entity regclass, rec jsonb, cond jsonb)
returns boolean
language plpgsql stable
as $$
declare
    col text := cond ->> 'column';
    op text := cond ->> 'op';
    is_value text := upper(cond ->> 'value');
    passes boolean;
begin
    if op = 'is' and is_value not in ('NULL', 'TRUE', 'FALSE', 'UNKNOWN') then
        raise exception 'invalid value for is: %', cond ->> 'value'
            using errcode = 'invalid_parameter_value';
    end if;
    execute format(
        'select ' || realtime._filter_sql(op, coalesce((cond ->> 'negate')::boolean, false)),
        format('(jsonb_populate_record(null::%s, $1)).%I', entity, col),
        format('(jsonb_populate_record(null::%s, jsonb_build_object($4, $2))).%I', entity, col),
        format('array(select (jsonb_populate_record(null::%s, jsonb_build_object($4, v))).%I '
               'from jsonb_array_elements_text($3) v)', entity, col),
        is_value)
    into passes
    using rec, cond ->> 'value', coalesce(cond -> 'values', '[]'), col;
    return coalesce(passes, false);
end
$$;

-- _filters_pass: does `rec` pass every condition of `filters`? A condition that cannot be
-- evaluated any more (a column dropped since subscribing) fails, with a WARNING, and never
-- aborts the writer's transaction.
create function realtime._filters_pass(entity regclass, rec jsonb, filters jsonb)
returns boolean
language plpgsql stable
as $$
declare
    cond jsonb;
begin
    for cond in select * from jsonb_array_elements(filters) loop
        begin
            if not realtime._filter_passes(entity, rec, cond) then
                return false;
            end if;
        exception when others then
            raise warning 'pg_realtime: filter % on % failed: %', cond, entity, sqlerrm;
            return false;
        end;
    end loop;
    return true;
end
$$;

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

-- enable / disable: capture a table's changes for Postgres Changes subscribers (as its owner).
create function realtime.enable(entity regclass)
returns void
language sql volatile
as $$ select realtime._capture_on(entity, 'enable') $$;

create function realtime.disable(entity regclass)
returns void
language sql volatile
as $$ select realtime._capture_off(entity) $$;

-- Tables in the supabase_realtime publication are captured too (the Supabase habit:
-- `alter publication supabase_realtime add table ...`); run after every publication DDL.
create function realtime._sync_publication()
returns event_trigger
language plpgsql volatile
as $$
declare
    entity regclass;
begin
    for entity in
        select distinct pg_catalog.pg_partition_root(format('%I.%I', schemaname, tablename)::regclass)
          from pg_catalog.pg_publication_tables where pubname = 'supabase_realtime'
    loop
        perform realtime._capture_on(entity, 'publication');
    end loop;
    for entity in
        select t.tgrelid::regclass from pg_catalog.pg_trigger t
         where t.tgname = 'realtime_capture_insert'
           and realtime._capture_source(t.tgrelid) = 'publication'
           and t.tgrelid not in (
               select pg_catalog.pg_partition_root(format('%I.%I', schemaname, tablename)::regclass)
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
create function realtime._subscribe(_sidecar uuid, _claims jsonb, _bindings jsonb)
returns table (out_binding bigint, out_subscription bigint)
language plpgsql volatile
set timezone = 'UTC'
as $$
declare
    b jsonb;
    cond jsonb;
    entity regclass;
    entities regclass[];
    col text;
    eq_col text;
    eq_val jsonb;
    rest jsonb;
    _role text := _claims ->> 'role';
    sub_id bigint;
begin
    if not exists (select from pg_catalog.pg_roles where rolname = _role) then
        raise exception 'role "%" does not exist', _role using errcode = 'invalid_authorization_specification';
    end if;
    for b in select * from jsonb_array_elements(_bindings) loop
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
        foreach entity in array entities loop
            eq_col := null;
            eq_val := null;
            rest := '[]';
            for cond in select * from jsonb_array_elements(b -> 'filters') loop
                col := cond ->> 'column';
                if not exists (select from pg_catalog.pg_attribute
                                where attrelid = entity and attname = col and attnum > 0 and not attisdropped) then
                    raise exception 'Error parsing `filter` params: column "%" does not exist in %', col, entity
                        using errcode = 'undefined_column';
                end if;
                if cond ->> 'op' in ('match', 'imatch') then
                    perform '' ~ (cond ->> 'value');
                end if;
                -- Casts the value(s) to the column type and resolves the operator, or raises.
                perform realtime._filter_passes(entity, '{}', cond);
                if eq_col is null and cond ->> 'op' = 'eq' and not coalesce((cond ->> 'negate')::boolean, false) then
                    eq_col := col;
                    execute format('select to_jsonb((jsonb_populate_record(null::%s, jsonb_build_object($2, $1))).%I)',
                                   entity, col)
                       into eq_val using cond ->> 'value', col;
                else
                    rest := rest || jsonb_build_array(cond);
                end if;
            end loop;
            for col in select jsonb_array_elements_text(coalesce(b -> 'select', '[]')) loop
                if not exists (select from pg_catalog.pg_attribute
                                where attrelid = entity and attname = col and attnum > 0 and not attisdropped) then
                    raise exception 'column "%" of select does not exist in %', col, entity
                        using errcode = 'undefined_column';
                end if;
            end loop;
            insert into realtime.subscription
                (sidecar, binding, entity, action_filter, filters, claims, claims_role,
                 selected_columns, eq_column, eq_value)
            values (_sidecar, (b ->> 'binding')::bigint, entity, b ->> 'event', rest,
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
language sql volatile
as $$
    delete from realtime.subscription where sidecar = _sidecar and id = any(ids);
    select realtime._subscriptions_changed();
$$;

-- _sweep_subscriptions: drop the subscriptions of `_sidecar` it no longer serves (`live`); rows
-- younger than `grace` are kept, as their channel may not have registered them yet.
create function realtime._sweep_subscriptions(_sidecar uuid, live bigint[], grace interval)
returns void
language plpgsql volatile
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
