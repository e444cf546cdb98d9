-- Internal storage of pg_realtime. Not an API: read it through realtime._poll().

-- One row per committed message. UNLOGGED: no WAL on the writer's path, emptied by crash
-- recovery (which starts a new epoch, see queue_epoch). `seq` is assigned at pre-commit in commit
-- order and doubles as the message's offset within its topic (increasing, not contiguous).
-- `extension` is what the row carries: a 'broadcast' (user event), a 'presence' diff, or a
-- 'postgres_changes' change for the subscriptions of the sidecar named by `topic`. `origin`
-- is the sidecar that already delivered the message to its own clients (null: from SQL), so it
-- skips the row when reading it back.
create unlogged table realtime.queue (
    seq            bigint      primary key,
    topic          text        not null,
    private        boolean     not null default false,
    extension      text        not null default 'broadcast'
                               check (extension in ('broadcast', 'presence', 'postgres_changes')),
    event          text        not null,
    payload        jsonb,
    binary_payload bytea,
    msg_id         uuid,
    origin         uuid,
    inserted_at    timestamptz not null default now(),
    check (payload is null or binary_payload is null)
);
-- Rows live for seconds: compressing large payloads (a change routed to a thousand
-- subscriptions is several kB) would cost the writer more than it saves.
alter table realtime.queue alter column payload set storage external,
                           alter column binary_payload set storage external;
-- Constant insert-at-the-head, delete-at-the-tail churn: vacuum early so pruned rows' space is
-- reused instead of the table growing.
alter table realtime.queue set (
    autovacuum_vacuum_scale_factor = 0.0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_insert_scale_factor = 0.0,
    autovacuum_vacuum_insert_threshold = 50000
);

-- The queue's epoch. UNLOGGED like the queue, so crash recovery empties both together; the
-- next reader then creates a fresh epoch and clients learn that earlier offsets are gone.
create unlogged table realtime.queue_epoch (
    singleton  boolean     primary key default true check (singleton),
    epoch      uuid        not null default gen_random_uuid(),
    started_at timestamptz not null default now()
);

-- Callers use the API functions; the tables stay internal.
grant usage on schema realtime to public;
revoke all on realtime.queue, realtime.queue_epoch from public;

-- The sidecar's role: exactly the rights the sidecar needs (granted in sql/api.sql), nothing
-- else. The sidecar logs in as a member of it (`create role sidecar login password '…' in role
-- realtime_sidecar`), never as a superuser. It may SET ROLE to the roles tokens carry, so it is
-- made a member of those that exist now; for roles created later: `grant <role> to
-- realtime_sidecar`. Roles are cluster-wide: it outlives the extension.
do $$
begin
    if not exists (select from pg_catalog.pg_roles where rolname = 'realtime_sidecar') then
        create role realtime_sidecar nologin;
    end if;
end
$$;
