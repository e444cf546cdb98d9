//! Postgres Changes capture: decides, in the writer's transaction, which subscriptions may see
//! each change, and queues what must be delivered (SQL surface in sql/changes.sql).
//!
//! `realtime._capture` is a statement-level AFTER trigger with transition tables: one call per
//! statement however many rows it touched. Per call:
//! 1. tables without subscriptions return at once (a backend-local answer per table, asked
//!    again with a few index probes when the shared generation counter has moved);
//! 2. as the bootstrap superuser: candidate subscriptions per row (action, an indexed `eq`
//!    filter, then every filter, typed through the column type) and the row images;
//! 3. per distinct (role, claims) group, not per subscription: column privileges, then — in a
//!    subtransaction, as that role with `request.jwt.claims` set — one primary-key existence
//!    query over all the group's rows (typed key arrays taken out of the row images once per
//!    statement; one executor per role, rescanned per group: see `rls`). INSERT/UPDATE are
//!    checked against the table after the statement (an UPDATE that moves a row out of view is
//!    not delivered); DELETE against the statement's own snapshot, where the deleted rows still
//!    exist (a subscriber only hears of the deletion of a row it was allowed to see). A policy
//!    that fails hides the row from its group only (WARNING) and never aborts the writer;
//! 4. one queue row per (change, sidecar, column view), `extension = 'postgres_changes'`,
//!    `topic` = the sidecar's id, payload `{"subscriptions": [...], "data": {...}}`. Queue rows
//!    are written at commit in commit order like every other message; a rolled-back statement
//!    or savepoint drops them.
use pgrx::prelude::*;
use pgrx::{IntoDatum, JsonB, PgTryBuilder};
use serde_json::{json, Map, Value};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::pending;
use crate::rls::Runs;
use crate::spi;

static GENERATION: pgrx::PgAtomic<AtomicU64> = unsafe { pgrx::PgAtomic::new(c"pg_realtime_subs_gen") };

thread_local! {
    /// Per table, as of a generation: the columns of its subscriptions' `eq` filters, or None
    /// when it has no subscriptions.
    static SUBSCRIBED: RefCell<HashMap<pg_sys::Oid, (u64, EqColumns)>> = RefCell::new(HashMap::new());
    /// This transaction changed subscriptions: move the generation again at commit, so that a
    /// backend that reloaded before the commit became visible reloads once more.
    static BUMP_AT_COMMIT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A table's `eq`-filtered columns; None: the table has no subscriptions.
type EqColumns = Option<Rc<[String]>>;

pub fn init_shmem() {
    pgrx::pg_shmem_init!(GENERATION = AtomicU64::new(1));
}

/// A record over 1 MiB keeps only values up to 64 bytes (Supabase's `Error 413`).
const MAX_RECORD_BYTES: usize = 1024 * 1024;
const MAX_KEPT_VALUE_BYTES: usize = 64;

/// `realtime._subscriptions_changed()`: called by _subscribe / _unsubscribe / sidecar removal.
#[pg_extern(volatile, parallel_unsafe, name = "_subscriptions_changed")]
fn subscriptions_changed() {
    GENERATION.get().fetch_add(1, Ordering::AcqRel);
    BUMP_AT_COMMIT.set(true);
}

/// Transaction end: a committed subscription change moves the generation once more.
pub fn on_xact_end(committed: bool) {
    if BUMP_AT_COMMIT.replace(false) && committed {
        GENERATION.get().fetch_add(1, Ordering::AcqRel);
    }
}

/// Whether table $1 has subscriptions, and the distinct columns of their `eq` filters: a skip
/// scan of the subscription index (one probe per distinct column), so that subscription churn
/// anywhere costs a writer a few index probes, not a scan of every subscription.
const SUBSCRIBED_SQL: &str = "
    with recursive cols(col) as (
            select min(eq_column) from realtime.subscription where entity = $1
          union all
            select (select min(s.eq_column) from realtime.subscription s
                     where s.entity = $1 and s.eq_column > c.col)
              from cols c where c.col is not null)
    select exists (select from realtime.subscription where entity = $1),
           coalesce(array_agg(col) filter (where col is not null), '{}')
      from cols";

/// The columns of `entity`'s `eq`-filtered subscriptions; None: no subscriptions.
fn subscribed(entity: pg_sys::Oid) -> EqColumns {
    let generation = GENERATION.get().load(Ordering::Acquire);
    let cached = SUBSCRIBED.with_borrow(|s| s.get(&entity).filter(|(g, _)| *g == generation).map(|(_, c)| c.clone()));
    if let Some(known) = cached {
        return known;
    }
    let mut known = None;
    as_superuser(|| {
        Spi::connect(|_| unsafe {
            spi::run(SUBSCRIBED_SQL, &[pg_sys::OIDOID], &[entity.into_datum()], true, |row| {
                if row.get::<bool>(1) == Some(true) {
                    known = Some(row.get::<Vec<String>>(2).unwrap_or_default().into());
                }
            })
        })
    });
    SUBSCRIBED.with_borrow_mut(|s| s.insert(entity, (generation, known.clone())));
    known
}

/// Runs `f` with the bootstrap superuser as the current user; the caller's identity comes back
/// afterwards (and on ERROR, transaction or subtransaction abort restores it).
fn as_superuser<R>(f: impl FnOnce() -> R) -> R {
    as_user(pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID), f)
}

fn as_user<R>(user: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    unsafe {
        let (mut uid, mut ctx) = (pg_sys::Oid::INVALID, 0);
        pg_sys::GetUserIdAndSecContext(&mut uid, &mut ctx);
        pg_sys::SetUserIdAndSecContext(user, ctx | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32);
        let r = f();
        pg_sys::SetUserIdAndSecContext(uid, ctx);
        r
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Insert,
    Update,
    Delete,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Insert => "INSERT",
            Action::Update => "UPDATE",
            Action::Delete => "DELETE",
        }
    }
}

/// One matched (row, subscription).
struct Match {
    ord: i64,
    subscription: i64,
    who: Rc<Subscriber>,
}

/// What a matched subscription's delivery depends on, loaded once per statement.
struct Subscriber {
    sidecar: String,
    role: String,
    claims: String,
    selected: Option<Vec<String>>,
    /// The (role, claims) group's number: equal for equal (role, claims).
    group: usize,
}

/// A column of the captured table.
struct Column {
    name: String,
    quoted: String,
    type_name: String,
    is_pk: bool,
}

/// One (role, claims) group's check, prepared before any of them runs.
struct Check {
    role: String,
    claims: String,
    ords: Vec<i64>,
    error: Option<&'static str>,
    /// The RLS query (tables with RLS only).
    query: Option<Probe>,
}

/// Which of a statement's rows a group may see: `select ord … where the row is visible`, its
/// parameters the rows' ords and primary key values as arrays (one per key column).
#[derive(Clone)]
struct Probe {
    sql: Rc<str>,
    types: Rc<[pg_sys::Oid]>,
    args: Rc<[Option<pg_sys::Datum>]>,
}

#[pg_trigger]
fn _capture<'a>(
    trigger: &'a pgrx::PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>, pgrx::PgTriggerError> {
    let entity = trigger.relid()?;
    let Some(eq_columns) = subscribed(entity) else {
        return Ok(None);
    };
    let action = match trigger.op()? {
        pgrx::PgTriggerOperation::Insert => Action::Insert,
        pgrx::PgTriggerOperation::Update => Action::Update,
        pgrx::PgTriggerOperation::Delete => Action::Delete,
        pgrx::PgTriggerOperation::Truncate => return Ok(None),
    };
    // The statement's snapshot: the rows it deleted are still visible in it.
    let before = unsafe { pg_sys::RegisterSnapshot(pg_sys::GetActiveSnapshot()) };
    let data = trigger.trigger_data() as *const pg_sys::TriggerData as *mut pg_sys::TriggerData;
    // A fixed search path (pg_catalog implicitly first): the writer's session cannot slip its
    // own functions or operators into the checks, and policies resolve names as by default.
    // UTC: records read the same whoever wrote them, and `eq` filter values (rendered in UTC by
    // _subscribe) match timestamptz columns.
    let nest = unsafe { pg_sys::NewGUCNestLevel() };
    set_local("search_path", "\"$user\", public");
    set_local("TimeZone", "UTC");
    as_superuser(|| route(entity, &eq_columns, action, before, data));
    unsafe {
        pg_sys::AtEOXact_GUC(true, nest);
        pg_sys::UnregisterSnapshot(before);
    }
    Ok(None)
}

/// Candidate subscriptions of a statement's rows ($4 ords, $5 row images as text): those without
/// an `eq` filter, and per `eq` column ($3) an index probe for the row's value — never a scan
/// of every subscription of the table. Then the other filters.
const MATCHES_SQL: &str = "
    select r.ord, s.id
      from unnest($4::int8[], $5::text[]::jsonb[]) r(ord, rec)
      cross join lateral (
            select * from realtime.subscription s
             where s.entity = $1 and s.eq_column is null and s.action_filter in ('*', $2)
            union all
            select p.* from unnest($3::text[]) c(col)
             cross join lateral (
                   select * from realtime.subscription s
                    where s.entity = $1 and s.eq_column = c.col and s.eq_value = r.rec -> c.col
                      and s.action_filter in ('*', $2)
                   offset 0) p) s
     where s.filters = '[]' or realtime._filters_pass($1::regclass, r.rec, s.filters)";
const MATCHES_TYPES: [pg_sys::Oid; 5] =
    [pg_sys::OIDOID, pg_sys::TEXTOID, pg_sys::TEXTARRAYOID, pg_sys::INT8ARRAYOID, pg_sys::TEXTARRAYOID];

const SUBSCRIBERS_SQL: &str = "
    select id, sidecar::text, claims_role::text, claims::text, selected_columns
      from realtime.subscription where id = any($1)";

const META_SQL: &str = "
    select n.nspname::text, c.relname::text, c.relrowsecurity,
           to_char(clock_timestamp() at time zone 'utc', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
           $1::regclass::text
      from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
     where c.oid = $1";

/// Columns of table $1 in attnum order; the type name is empty for a column role $2 may not select.
const COLUMNS_SQL: &str = "
    select a.attname::text, quote_ident(a.attname),
           case when has_column_privilege($2::text, a.attrelid, a.attnum, 'SELECT')
                then (select t.typname::text from pg_catalog.pg_type t where t.oid = a.atttypid)
                else '' end,
           coalesce((select a.attnum = any(i.indkey::int2[]) from pg_catalog.pg_index i
                      where i.indrelid = $1 and i.indisprimary), false)
      from pg_catalog.pg_attribute a
     where a.attrelid = $1 and a.attnum > 0 and not a.attisdropped
     order by a.attnum";

/// A changed row: its image as text and parsed (the new row; DELETE: the deleted row), and the
/// old row (UPDATE, DELETE).
struct Image {
    text: String,
    rec: Value,
    old: Option<Value>,
}

/// The details of subscriptions `ids`, numbered by (role, claims) group. Inside SPI.
unsafe fn subscribers(mut ids: Vec<i64>) -> HashMap<i64, Rc<Subscriber>> {
    ids.sort_unstable();
    ids.dedup();
    let mut loaded = Vec::with_capacity(ids.len());
    spi::run(SUBSCRIBERS_SQL, &[pg_sys::INT8ARRAYOID], &[ids.into_datum()], true, |row| {
        let subscriber = Subscriber {
            sidecar: row.get(2).unwrap_or_default(),
            role: row.get(3).unwrap_or_default(),
            claims: row.get(4).unwrap_or_default(),
            selected: row.get(5),
            group: 0,
        };
        loaded.push((row.get::<i64>(1).unwrap_or_default(), subscriber))
    });
    loaded.sort_unstable_by(|(_, a), (_, b)| (&a.role, &a.claims).cmp(&(&b.role, &b.claims)));
    let mut by_id = HashMap::with_capacity(loaded.len());
    let mut last: Option<Rc<Subscriber>> = None;
    for (id, mut subscriber) in loaded {
        subscriber.group = match &last {
            Some(prev) if (&prev.role, &prev.claims) == (&subscriber.role, &subscriber.claims) => prev.group,
            Some(prev) => prev.group + 1,
            None => 0,
        };
        let subscriber = Rc::new(subscriber);
        by_id.insert(id, subscriber.clone());
        last = Some(subscriber);
    }
    by_id
}

/// Steps 2–4 of the module note, inside the trigger's SPI connection.
fn route(
    entity: pg_sys::Oid,
    eq_columns: &[String],
    action: Action,
    before: pg_sys::Snapshot,
    data: *mut pg_sys::TriggerData,
) {
    let rows_sql = match action {
        Action::Insert => "select row_number() over () as ord, to_jsonb(n)::text, null from realtime_new n",
        Action::Update => {
            "select n.ord, n.rec::text, o.rec::text
               from (select row_number() over () as ord, to_jsonb(x) as rec from realtime_new x) n
               join (select row_number() over () as ord, to_jsonb(x) as rec from realtime_old x) o using (ord)"
        }
        Action::Delete => "select row_number() over () as ord, to_jsonb(o)::text, to_jsonb(o)::text from realtime_old o",
    };
    let loaded = Spi::connect_mut(|client| {
        // The transition tables are visible to queries on this connection only.
        unsafe { pg_sys::SPI_register_trigger_data(data) };
        let mut rows = BTreeMap::new();
        for row in client.select(rows_sql, None, &[])? {
            let ord = row.get::<i64>(1)?.unwrap_or_default();
            rows.insert(ord, (row.get::<String>(2)?.unwrap_or_default(), row.get::<String>(3)?));
        }
        let mut matches = Vec::new();
        let mut meta = None;
        let ords: Vec<i64> = rows.keys().copied().collect();
        let images: Vec<&str> = rows.values().map(|(rec, _)| rec.as_str()).collect();
        let args = [
            entity.into_datum(),
            action.name().into_datum(),
            eq_columns.to_vec().into_datum(),
            ords.into_datum(),
            images.into_datum(),
        ];
        unsafe {
            let mut pairs: Vec<(i64, i64)> = Vec::new();
            spi::run(MATCHES_SQL, &MATCHES_TYPES, &args, false, |row| {
                pairs.push((row.get(1).unwrap_or_default(), row.get(2).unwrap_or_default()))
            });
            if !pairs.is_empty() {
                // Each subscription's details once, not once per matched row.
                let by_id = subscribers(pairs.iter().map(|&(_, id)| id).collect());
                matches = pairs
                    .into_iter()
                    .filter_map(|(ord, id)| Some(Match { ord, subscription: id, who: by_id.get(&id)?.clone() }))
                    .collect();
            }
            if !matches.is_empty() {
                spi::run(META_SQL, &[pg_sys::OIDOID], &[entity.into_datum()], true, |row| {
                    meta = Some((row.get(1), row.get(2), row.get(3), row.get(4), row.get(5)))
                });
            }
        }
        Ok::<_, pgrx::spi::Error>((matches, rows, meta))
    });
    let (mut matches, rows, meta) = match loaded {
        Ok(loaded) => loaded,
        Err(err) => pgrx::error!("pg_realtime: reading subscriptions failed: {err}"),
    };
    let Some((Some(schema), Some(table), Some(rls), Some(commit_timestamp), Some(entity_sql))) = meta else {
        return;
    };
    let rows: BTreeMap<i64, Image> = rows
        .into_iter()
        .map(|(ord, (text, old))| {
            let rec = serde_json::from_str(&text).unwrap_or(Value::Null);
            (ord, Image { text, rec, old: old.and_then(|o| serde_json::from_str(&o).ok()) })
        })
        .collect();
    let change = Change {
        entity,
        action,
        schema,
        table,
        commit_timestamp,
        entity_sql,
        rls,
        before,
        columns: RefCell::default(),
        probes: RefCell::default(),
    };
    matches.sort_unstable_by_key(|m| (m.who.group, m.ord));
    let mut groups = Vec::new();
    let mut start = 0;
    while start < matches.len() {
        let end = matches[start..]
            .iter()
            .position(|m| m.who.group != matches[start].who.group)
            .map_or(matches.len(), |n| start + n);
        groups.push(&matches[start..end]);
        start = end;
    }
    change.deliver(&groups, &rows);
}

struct Change {
    entity: pg_sys::Oid,
    action: Action,
    schema: String,
    table: String,
    commit_timestamp: String,
    /// The table's name as SQL (regclass output: quoted as needed).
    entity_sql: String,
    rls: bool,
    before: pg_sys::Snapshot,
    /// Columns as each role sees them, loaded once per role per statement.
    columns: RefCell<HashMap<String, Rc<Vec<Column>>>>,
    /// Checks by row set (datums in the trigger's memory context).
    probes: RefCell<HashMap<Vec<i64>, Probe>>,
}

impl Change {
    /// Privileges and RLS per (role, claims) group, then one queue row per (change, sidecar,
    /// column view) listing every subscription that may see it.
    fn deliver(&self, groups: &[&[Match]], rows: &BTreeMap<i64, Image>) {
        // Inserted and updated rows are checked as they are after the statement: one snapshot
        // for all groups, taken once the statement's changes are visible.
        let snapshot = if self.action == Action::Delete {
            self.before
        } else {
            unsafe {
                pg_sys::CommandCounterIncrement();
                pg_sys::RegisterSnapshot(pg_sys::GetTransactionSnapshot())
            }
        };
        let verdicts = self.check_groups(groups, rows, snapshot);
        if self.action != Action::Delete {
            unsafe { pg_sys::UnregisterSnapshot(snapshot) };
        }
        type View<'m> = (i64, &'m str, &'m str, Option<&'m Vec<String>>, Option<&'static str>);
        let mut out: BTreeMap<View, Vec<i64>> = BTreeMap::new();
        for (group, (visible, error)) in groups.iter().zip(&verdicts) {
            for m in group.iter().filter(|m| visible.contains(&m.ord)) {
                let view = (m.ord, m.who.sidecar.as_str(), m.who.role.as_str(), m.who.selected.as_ref(), *error);
                out.entry(view).or_default().push(m.subscription);
            }
        }
        for ((ord, sidecar, role, selected, error), subscriptions) in out {
            let Some(image) = rows.get(&ord) else { continue };
            let columns = self.columns_for(role);
            let data = self.data(&columns, selected, &image.rec, image.old.as_ref(), error);
            let payload = json!({ "subscriptions": subscriptions, "data": data });
            if let Some(datum) = JsonB(payload).into_datum() {
                pending::push(
                    sidecar,
                    "postgres_changes",
                    datum,
                    false,
                    pending::Envelope {
                        private: false,
                        msg_id: None,
                        origin: None,
                        extension: pending::Extension::PostgresChanges,
                    },
                );
            }
        }
    }

    /// Each group's visible rows and the error its subscribers get instead of records. All
    /// RLS checks run in one subtransaction; if any fails, each group runs in its own, so a
    /// failing policy hides the change from its own group only.
    fn check_groups(
        &self,
        groups: &[&[Match]],
        rows: &BTreeMap<i64, Image>,
        snapshot: pg_sys::Snapshot,
    ) -> Vec<(HashSet<i64>, Option<&'static str>)> {
        let checks: Vec<Check> = groups.iter().map(|g| self.plan_check(g, rows)).collect();
        if checks.iter().all(|c| c.query.is_none()) {
            return checks.iter().map(|c| (c.ords.iter().copied().collect(), c.error)).collect();
        }
        in_subtransaction(|| run_checks(&checks, snapshot)).unwrap_or_else(|_| {
            checks
                .iter()
                .map(|check| {
                    in_subtransaction(|| run_checks(std::slice::from_ref(check), snapshot))
                        .map(|mut verdicts| verdicts.remove(0))
                        .unwrap_or_else(|err| {
                            pgrx::warning!(
                                "pg_realtime: the policies of {} failed for role {} ({err}); change not delivered to it",
                                self.entity_sql,
                                check.role
                            );
                            (HashSet::new(), None)
                        })
                })
                .collect()
        })
    }

    /// What checking one group takes: its error (no primary key, primary key not selectable),
    /// or the RLS query to run for its rows.
    fn plan_check(&self, group: &[Match], rows: &BTreeMap<i64, Image>) -> Check {
        let first = &group[0];
        let mut ords: Vec<i64> = group.iter().map(|m| m.ord).collect();
        ords.dedup();
        let mut check = Check {
            role: first.who.role.clone(),
            claims: first.who.claims.clone(),
            ords,
            error: None,
            query: None,
        };
        let columns = self.columns_for(&first.who.role);
        let pk: Vec<&Column> = columns.iter().filter(|c| c.is_pk).collect();
        if pk.is_empty() {
            check.error = Some("Error 400: Bad Request, no primary key");
        } else if pk.iter().any(|c| c.type_name.is_empty()) {
            check.error = Some("Error 401: Unauthorized");
        } else if self.rls {
            check.query = Some(self.probe_for(&check.ords, &pk, rows));
        }
        check
    }

    /// The check of `ords`, built once per statement and row set: groups without filters all
    /// check the same rows. The keys are typed arrays taken out of the row images here, so a
    /// check does no JSON work and its lookup is a primary key index probe (the LIMIT keeps it
    /// one whatever the generic plan thinks of the table's size).
    fn probe_for(&self, ords: &[i64], pk: &[&Column], rows: &BTreeMap<i64, Image>) -> Probe {
        if let Some(probe) = self.probes.borrow().get(ords) {
            return probe.clone();
        }
        // The checked image is the row's after the statement, or the deleted row.
        let images: Vec<&str> = ords.iter().map(|ord| rows[ord].text.as_str()).collect();
        let keys_sql = format!(
            "select pg_catalog.array_agg(r.ord order by r.ord), {}
               from unnest($1::int8[], $2::text[]::jsonb[]) r(ord, rec)",
            pk.iter()
                .map(|c| format!(
                    "pg_catalog.array_agg((pg_catalog.jsonb_populate_record(null::{}, r.rec)).{} order by r.ord)",
                    self.entity_sql, c.quoted
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let (types, args) = key_arrays(&keys_sql, ords, images);
        let columns: Vec<String> = (0..pk.len()).map(|i| format!("k{i}")).collect();
        let params: Vec<String> = (1..=types.len()).map(|i| format!("${i}")).collect();
        let condition = pk
            .iter()
            .zip(&columns)
            .map(|(c, k)| format!("t.{} = k.{k}", c.quoted))
            .collect::<Vec<_>>()
            .join(" and ");
        let sql = format!(
            "select k.ord from unnest({}) k(ord, {})
               cross join lateral (select 1 from {} t where {condition} limit 1) hit",
            params.join(", "),
            columns.join(", "),
            self.entity_sql
        );
        let probe = Probe { sql: sql.into(), types: types.into(), args: args.into() };
        self.probes.borrow_mut().insert(ords.to_vec(), probe.clone());
        probe
    }

    fn columns_for(&self, role: &str) -> Rc<Vec<Column>> {
        if let Some(columns) = self.columns.borrow().get(role) {
            return columns.clone();
        }
        let columns = Rc::new(self.columns(role));
        self.columns.borrow_mut().insert(role.to_owned(), columns.clone());
        columns
    }

    /// Columns in attnum order; `type_name` is empty for a column `role` may not select.
    fn columns(&self, role: &str) -> Vec<Column> {
        let mut columns = Vec::new();
        let args = [self.entity.into_datum(), role.into_datum()];
        Spi::connect(|_| unsafe {
            spi::run(COLUMNS_SQL, &[pg_sys::OIDOID, pg_sys::TEXTOID], &args, true, |row| {
                columns.push(Column {
                    name: row.get(1).unwrap_or_default(),
                    quoted: row.get(2).unwrap_or_default(),
                    type_name: row.get(3).unwrap_or_default(),
                    is_pk: row.get(4).unwrap_or_default(),
                })
            })
        });
        columns
    }

    fn data(
        &self,
        columns: &[Column],
        selected: Option<&Vec<String>>,
        rec: &Value,
        old: Option<&Value>,
        error: Option<&str>,
    ) -> Value {
        let shown: Vec<&Column> = columns
            .iter()
            .filter(|c| !c.type_name.is_empty())
            .filter(|c| c.is_pk || selected.is_none_or(|s| s.contains(&c.name)))
            .collect();
        let pick = |image: &Value, only_pk: bool| -> Map<String, Value> {
            shown
                .iter()
                .filter(|c| !only_pk || c.is_pk)
                .map(|c| (c.name.clone(), image.get(&c.name).cloned().unwrap_or(Value::Null)))
                .collect()
        };
        let mut data = Map::new();
        data.insert("schema".into(), self.schema.clone().into());
        data.insert("table".into(), self.table.clone().into());
        data.insert("commit_timestamp".into(), self.commit_timestamp.clone().into());
        data.insert("type".into(), self.action.name().into());
        let cols: Vec<Value> = shown.iter().map(|c| json!({ "name": c.name, "type": c.type_name })).collect();
        data.insert("columns".into(), cols.into());
        let mut errors = error.map(|e| vec![Value::from(e)]);
        if error.is_none() {
            if self.action != Action::Delete {
                let mut record = pick(rec, false);
                if Value::Object(record.clone()).to_string().len() > MAX_RECORD_BYTES {
                    record.retain(|_, v| v.to_string().len() <= MAX_KEPT_VALUE_BYTES);
                    errors = Some(vec!["Error 413: Payload Too Large".into()]);
                }
                data.insert("record".into(), record.into());
            }
            if self.action != Action::Insert {
                data.insert("old_record".into(), old.map(|o| pick(o, true)).unwrap_or_default().into());
            }
        } else {
            if self.action != Action::Delete {
                data.insert("record".into(), json!({}));
            }
            if self.action != Action::Insert {
                data.insert("old_record".into(), json!({}));
            }
        }
        data.insert("errors".into(), errors.map_or(Value::Null, Value::from));
        Value::Object(data)
    }
}

fn role_oid(role: &str) -> Option<pg_sys::Oid> {
    let name = std::ffi::CString::new(role).ok()?;
    let oid = unsafe { pg_sys::get_role_oid(name.as_ptr(), true) };
    (oid != pg_sys::Oid::INVALID).then_some(oid)
}

fn set_local(name: &str, value: &str) {
    let (Ok(name), Ok(value)) = (std::ffi::CString::new(name), std::ffi::CString::new(value)) else {
        return;
    };
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_LOCAL,
            true,
            0,
            false,
        );
    }
}

/// Every check, in order (`checks` sorted by role): one executor per role and query, its
/// groups run one after another with their claims set.
fn run_checks(checks: &[Check], snapshot: pg_sys::Snapshot) -> Vec<(HashSet<i64>, Option<&'static str>)> {
    let mut verdicts = Vec::with_capacity(checks.len());
    let nest = unsafe { pg_sys::NewGUCNestLevel() };
    let mut start = 0;
    while start < checks.len() {
        let Some(probe) = &checks[start].query else {
            verdicts.push((checks[start].ords.iter().copied().collect(), checks[start].error));
            start += 1;
            continue;
        };
        let role = &checks[start].role;
        let end = checks[start..]
            .iter()
            .position(|c| &c.role != role || c.query.as_ref().is_none_or(|q| q.sql != probe.sql))
            .map_or(checks.len(), |n| start + n);
        match role_oid(role) {
            None => verdicts.extend((start..end).map(|_| (HashSet::new(), None))),
            Some(oid) => as_user(oid, || unsafe {
                let mut runs = None;
                for check in &checks[start..end] {
                    let claims: Value = serde_json::from_str(&check.claims).unwrap_or(Value::Null);
                    set_local("request.jwt.claims", &check.claims);
                    set_local("request.jwt.claim.sub", claims.get("sub").and_then(Value::as_str).unwrap_or_default());
                    set_local("request.jwt.claim.role", claims.get("role").and_then(Value::as_str).unwrap_or_default());
                    // Opened with the first group's claims set: planning may evaluate the
                    // policies' stable expressions (for estimates only).
                    let runs = runs.get_or_insert_with(|| Runs::open(&probe.sql, &probe.types, snapshot));
                    let args = check.query.as_ref().map(|q| q.args.clone()).unwrap_or_default();
                    verdicts.push((runs.run(&args), None));
                }
                if let Some(runs) = runs {
                    runs.close();
                }
            }),
        }
        start = end;
    }
    unsafe { pg_sys::AtEOXact_GUC(true, nest) };
    verdicts
}

/// Runs `sql` (`$1` the ords, `$2` their row images as text) returning one row of arrays; their
/// types and values, copied out of SPI.
fn key_arrays(sql: &str, ords: &[i64], images: Vec<&str>) -> (Vec<pg_sys::Oid>, Vec<Option<pg_sys::Datum>>) {
    let (mut types, mut values) = (Vec::new(), Vec::new());
    let args = [ords.to_vec().into_datum(), images.into_datum()];
    Spi::connect(|_| unsafe {
        spi::run(sql, &[pg_sys::INT8ARRAYOID, pg_sys::TEXTARRAYOID], &args, true, |row| {
            for n in 1..=row.columns() {
                types.push(row.type_of(n));
                values.push(row.transfer(n));
            }
        })
    });
    (types, values)
}

/// Runs `f` in a subtransaction; an ERROR inside rolls it back and yields its message. A
/// cancellation, statement timeout or shutdown (SQLSTATE class 57) is not a failing policy: it
/// goes on to end the writer's statement.
fn in_subtransaction<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    use pg_sys::panic::CaughtError;
    unsafe {
        let context = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(context);
        let result = PgTryBuilder::new(std::panic::AssertUnwindSafe(|| Ok(f())))
            .catch_others(Err)
            .execute();
        if result.is_ok() {
            pg_sys::ReleaseCurrentSubTransaction();
        } else {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
        }
        pg_sys::MemoryContextSwitchTo(context);
        pg_sys::CurrentResourceOwner = owner;
        result.map_err(|caught| {
            let report = match &caught {
                CaughtError::PostgresError(report) | CaughtError::ErrorReport(report) => report,
                CaughtError::RustPanic { ereport, .. } => ereport,
            };
            let class = |code: isize| code & 0xFFF;
            if class(report.sql_error_code() as isize) == class(PgSqlErrorCode::ERRCODE_QUERY_CANCELED as isize) {
                caught.rethrow();
            }
            report.message().to_owned()
        })
    }
}
