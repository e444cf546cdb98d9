-- Cluster-wide presence: every sidecar on the database sees who is present on every other.
--
-- A sidecar keeps its own clients' presences in memory and hands every change to the database as
-- a presence diff through realtime._publish: the diff is recorded here and queued (extension
-- 'presence') in the same transaction, so the table and the diffs other sidecars deliver never
-- disagree. Sidecars heartbeat; the presences of one that stops heartbeating are removed, with
-- a leave diff for each topic, by whichever sidecar notices first.

-- Sidecars alive on this database. UNLOGGED like the queue: all of it is live state.
create unlogged table realtime.sidecars (
    id      uuid        primary key,
    seen_at timestamptz not null default now()
);

-- One row per tracked presence (Phoenix: one meta of a key); `meta` includes its `phx_ref`.
create unlogged table realtime.presence_entries (
    phx_ref text        primary key,
    topic   text        not null,
    private boolean     not null,
    key     text        not null,
    meta    jsonb       not null,
    sidecar uuid        not null,
    since   timestamptz not null default now()
);
create index on realtime.presence_entries (topic, private);
create index on realtime.presence_entries (sidecar);
revoke all on realtime.sidecars, realtime.presence_entries from public;

-- Who is present where, for SQL: `select key, meta from realtime.presence where topic = 'room1'`.
-- Not granted to anyone by default (private channels' presence is as private as the channel);
-- grant select to the roles that may see it.
create view realtime.presence as
    select topic, private, key, meta - 'phx_ref' as meta, since
      from realtime.presence_entries;
revoke all on realtime.presence from public;

-- _presence_record: apply one presence diff of sidecar `origin` to the table (leaves, then
-- joins: an update leaves the old meta and joins the new one under the same key).
create function realtime._presence_record(origin uuid, _topic text, _private boolean, diff jsonb)
returns void
language sql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
    delete from realtime.presence_entries e
     using jsonb_each(coalesce(diff -> 'leaves', '{}')) l(key, value),
           jsonb_array_elements(l.value -> 'metas') m(meta)
     where e.phx_ref = m.meta ->> 'phx_ref';
    insert into realtime.presence_entries (phx_ref, topic, private, key, meta, sidecar)
    select m.meta ->> 'phx_ref', _topic, _private, j.key, m.meta - 'phx_ref_prev', origin
      from jsonb_each(coalesce(diff -> 'joins', '{}')) j(key, value),
           jsonb_array_elements(j.value -> 'metas') m(meta)
    on conflict (phx_ref) do update set meta = excluded.meta;
$$;

-- _presence_remove: sidecars `gone` have stopped; their presences leave everywhere (and their
-- Postgres Changes subscriptions are dropped), each topic getting one leave diff (from no origin: every sidecar delivers it). Concurrent callers are
-- safe: only the transaction that deletes a sidecar's row removes its presences.
create function realtime._presence_remove(gone uuid[])
returns void
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    left_topic record;
begin
    for left_topic in
        with dead as (
            delete from realtime.sidecars where id = any(gone) returning id
        ), removed as (
            delete from realtime.presence_entries e using dead where e.sidecar = dead.id
            returning e.topic, e.private, e.key, e.meta
        ), by_key as (
            select topic, private, key, jsonb_agg(meta) as metas from removed
             group by topic, private, key
        )
        select topic, private,
               jsonb_build_object('joins', '{}'::jsonb,
                                  'leaves', jsonb_object_agg(key, jsonb_build_object('metas', metas))) as diff
          from by_key
         group by topic, private
    loop
        perform realtime._enqueue(left_topic.topic, 'presence_diff', left_topic.diff,
                                  left_topic.private, null, null, 'presence');
    end loop;
    -- Their Postgres Changes subscriptions go too (sql/changes.sql).
    delete from realtime.subscription s
     where s.sidecar = any(gone) and not exists (select from realtime.sidecars where id = s.sidecar);
    if found then
        perform realtime._subscriptions_changed();
    end if;
end
$$;

-- _presence_heartbeat: sidecar `me` is alive; sidecars silent for longer than `ttl` are removed.
-- Returns true when `me` was not registered (first beat, or a crash emptied the unlogged
-- tables): the caller then announces its presences again.
create function realtime._presence_heartbeat(me uuid, ttl interval)
returns boolean
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    fresh boolean;
begin
    insert into realtime.sidecars as s (id) values (me)
    on conflict (id) do update set seen_at = now()
    returning (xmax = 0) into fresh;
    perform realtime._presence_remove(
        array(select id from realtime.sidecars where seen_at < now() - ttl and id <> me));
    return fresh;
end
$$;

revoke execute on function realtime._presence_record(uuid, text, boolean, jsonb),
    realtime._presence_remove(uuid[]), realtime._presence_heartbeat(uuid, interval) from public;
