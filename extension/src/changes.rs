//! Postgres Changes capture: decides, in the writer's transaction, which subscriptions may see
//! each change, and queues what must be delivered (SQL surface in sql/changes.sql).
//!
//! `realtime._capture` is a statement-level AFTER trigger with transition tables: one call per
//! statement however many rows it touched. Per call:
//! 1. tables without subscriptions return at once (a backend-local answer per table, asked
//!    again with a few index probes when the shared generation counter has moved);
//! 2. the row images (`to_jsonb` of each row) are read as the table's owner, security-restricted
//!    (`identity`): the column types' output functions and casts are the table's code;
//! 3. candidate subscriptions per row (action, an indexed `eq` filter) are read internally;
//!    the other filters are evaluated as the table's owner (`filter`), one query per filter shape;
//! 4. per distinct (role, claims) group, not per subscription: column privileges, then — in a
//!    subtransaction, as that role with `request.jwt.claims` set, security-restricted — one
//!    primary-key existence query over all the group's rows (typed key arrays taken out of the
//!    row images once per statement, as the owner; one executor per role, rescanned per group:
//!    see `rls`). INSERT/UPDATE are checked against the table after the statement (an UPDATE
//!    that moves a row out of view is not delivered); DELETE against the statement's own
//!    snapshot, where the deleted rows still exist (a subscriber only hears of the deletion of a
//!    row it was allowed to see). With REPLICA IDENTITY FULL an UPDATE's old row is sent whole
//!    only to groups that could see it before the statement. On a table with RLS, a row that
//!    cannot be checked (no primary key, or one the role may not select) reaches nobody. A policy
//!    that fails hides the row from its group only (WARNING) and never aborts the writer;
//! 5. one queue row per (change, sidecar, column view), `extension = 'postgres_changes'`,
//!    `topic` = the sidecar's id, payload `{"subscriptions": [...], "data": {...}}`. Queue rows
//!    are written at commit in commit order like every other message; a rolled-back statement
//!    or savepoint drops them.
use pgrx::prelude::*;
use pgrx::{IntoDatum, JsonB};
use serde_json::{json, Map, Value};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::filter::{self, Condition, Shape};
use crate::identity;
use crate::pending;
use crate::rls::Runs;
use crate::spi;

// SAFETY: the name is a static C string; pgrx allocates the atomic in shared memory at startup.
static GENERATION: pgrx::PgAtomic<AtomicU64> =
    unsafe { pgrx::PgAtomic::new(c"pg_realtime_subs_gen") };

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
    let cached = SUBSCRIBED.with_borrow(|s| {
        s.get(&entity)
            .filter(|(g, _)| *g == generation)
            .map(|(_, c)| c.clone())
    });
    if let Some(known) = cached {
        return known;
    }
    let mut known = None;
    identity::as_internal(|| {
        Spi::connect(|_| {
            // SAFETY: inside the SPI connection just opened; the argument matches its type.
            unsafe {
                spi::run(
                    SUBSCRIBED_SQL,
                    &[pg_sys::OIDOID],
                    &[entity.into_datum()],
                    true,
                    |row| {
                        if row.get::<bool>(1) == Some(true) {
                            known = Some(row.get::<Vec<String>>(2).unwrap_or_default().into());
                        }
                    },
                )
            }
        })
    });
    SUBSCRIBED.with_borrow_mut(|s| s.insert(entity, (generation, known.clone())));
    known
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
    /// Its filters besides the indexed `eq` (empty: none).
    filters: Vec<Condition>,
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

/// Which image of a changed row a check looks at.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Side {
    /// The row after the statement (INSERT, UPDATE) or the deleted row (DELETE).
    Current,
    /// An UPDATE's row before the statement.
    Old,
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
    let Some(owner) = identity::relation_owner(entity) else {
        return Ok(None);
    };
    // The statement's snapshot: the rows it deleted (and an UPDATE's old rows) are visible in it.
    let before = identity::register_active_snapshot();
    let data = trigger.trigger_data() as *const pg_sys::TriggerData as *mut pg_sys::TriggerData;
    identity::with_rendering(|| route(entity, owner, &eq_columns, action, before, data));
    identity::release_snapshot(before);
    Ok(None)
}

/// Candidate subscriptions of a statement's rows ($4 ords, $5 row images as text): those without
/// an `eq` filter, and per `eq` column ($3) an index probe for the row's value — never a scan
/// of every subscription of the table. Their other filters are evaluated afterwards, as the
/// table's owner.
const MATCHES_SQL: &str = "
    select r.ord, s.id
      from unnest($4::int8[], $5::text[]::jsonb[]) r(ord, rec)
      cross join lateral (
            select s.id from realtime.subscription s
             where s.entity = $1 and s.eq_column is null and s.action_filter in ('*', $2)
            union all
            select p.id from unnest($3::text[]) c(col)
             cross join lateral (
                   select s.id from realtime.subscription s
                    where s.entity = $1 and s.eq_column = c.col and s.eq_value = r.rec -> c.col
                      and s.action_filter in ('*', $2)
                   offset 0) p) s";
const MATCHES_TYPES: [pg_sys::Oid; 5] = [
    pg_sys::OIDOID,
    pg_sys::TEXTOID,
    pg_sys::TEXTARRAYOID,
    pg_sys::INT8ARRAYOID,
    pg_sys::TEXTARRAYOID,
];

const SUBSCRIBERS_SQL: &str = "
    select id, sidecar::text, claims_role::text, claims::text, selected_columns, filters::text
      from realtime.subscription where id = any($1)";

const META_SQL: &str = "
    select n.nspname::text, c.relname::text, c.relrowsecurity,
           to_char(clock_timestamp() at time zone 'utc', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
           format('%I.%I', n.nspname, c.relname), c.relreplident = 'f'
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

/// A changed row's images, as text and parsed: `text`/`rec` the new row (DELETE: the deleted
/// row), `old_text`/`old` the row before an UPDATE or DELETE.
struct Image {
    text: String,
    rec: Value,
    old_text: Option<String>,
    old: Option<Value>,
}

impl Image {
    fn text(&self, side: Side) -> &str {
        match side {
            Side::Current => &self.text,
            Side::Old => self.old_text.as_deref().unwrap_or(&self.text),
        }
    }
}

/// The details of subscriptions `ids`, numbered by (role, claims) group.
///
/// # Safety
/// Inside SPI.
unsafe fn subscribers(mut ids: Vec<i64>) -> HashMap<i64, Rc<Subscriber>> {
    ids.sort_unstable();
    ids.dedup();
    let mut loaded = Vec::with_capacity(ids.len());
    // SAFETY: the caller's SPI connection; the argument matches its type.
    unsafe {
        spi::run(
            SUBSCRIBERS_SQL,
            &[pg_sys::INT8ARRAYOID],
            &[ids.into_datum()],
            true,
            |row| {
                let filters = row.get::<String>(6).unwrap_or_default();
                let subscriber = Subscriber {
                    sidecar: row.get(2).unwrap_or_default(),
                    role: row.get(3).unwrap_or_default(),
                    claims: row.get(4).unwrap_or_default(),
                    selected: row.get(5),
                    filters: serde_json::from_str(&filters).unwrap_or_default(),
                    group: 0,
                };
                loaded.push((row.get::<i64>(1).unwrap_or_default(), subscriber))
            },
        );
    }
    loaded.sort_unstable_by(|(_, a), (_, b)| (&a.role, &a.claims).cmp(&(&b.role, &b.claims)));
    let mut by_id = HashMap::with_capacity(loaded.len());
    let mut last: Option<Rc<Subscriber>> = None;
    for (id, mut subscriber) in loaded {
        subscriber.group = match &last {
            Some(prev) if (&prev.role, &prev.claims) == (&subscriber.role, &subscriber.claims) => {
                prev.group
            }
            Some(prev) => prev.group + 1,
            None => 0,
        };
        let subscriber = Rc::new(subscriber);
        by_id.insert(id, subscriber.clone());
        last = Some(subscriber);
    }
    by_id
}

/// The table's metadata a change needs.
struct Meta {
    schema: String,
    table: String,
    rls: bool,
    commit_timestamp: String,
    entity_sql: String,
    replica_identity_full: bool,
}

/// The statement's changed rows by ord, read as the table's owner. The transition tables are
/// aliased with names of their own and read whole-row (`alias.*`), so no column name of the
/// table can be taken for them.
fn images(
    owner: pg_sys::Oid,
    action: Action,
    data: *mut pg_sys::TriggerData,
) -> BTreeMap<i64, Image> {
    let rows_sql = match action {
        Action::Insert => {
            "select pg_catalog.row_number() over () as ord, pg_catalog.to_jsonb(realtime_row.*)::pg_catalog.text, null
               from realtime_new realtime_row"
        }
        Action::Update => {
            "select realtime_after.ord, realtime_after.rec::pg_catalog.text, realtime_before.rec::pg_catalog.text
               from (select pg_catalog.row_number() over () as ord, pg_catalog.to_jsonb(realtime_row.*) as rec
                       from realtime_new realtime_row) realtime_after
               join (select pg_catalog.row_number() over () as ord, pg_catalog.to_jsonb(realtime_row.*) as rec
                       from realtime_old realtime_row) realtime_before using (ord)"
        }
        Action::Delete => {
            "select pg_catalog.row_number() over () as ord, pg_catalog.to_jsonb(realtime_row.*)::pg_catalog.text,
                    pg_catalog.to_jsonb(realtime_row.*)::pg_catalog.text
               from realtime_old realtime_row"
        }
    };
    let read = identity::as_table_owner(owner, || {
        Spi::connect_mut(|client| {
            // SAFETY: `data` is the trigger's own TriggerData, alive for the whole call; the
            // transition tables are visible to queries on this connection only.
            unsafe { pg_sys::SPI_register_trigger_data(data) };
            let mut rows = Vec::new();
            for row in client.select(rows_sql, None, &[])? {
                let ord = row.get::<i64>(1)?.unwrap_or_default();
                rows.push((
                    ord,
                    row.get::<String>(2)?.unwrap_or_default(),
                    row.get::<String>(3)?,
                ));
            }
            Ok::<_, pgrx::spi::Error>(rows)
        })
    });
    let read = read
        .unwrap_or_else(|err| pgrx::error!("pg_realtime: reading the changed rows failed: {err}"));
    read.into_iter()
        .map(|(ord, text, old_text)| {
            let rec = serde_json::from_str(&text).unwrap_or(Value::Null);
            let old = old_text
                .as_deref()
                .and_then(|o| serde_json::from_str(o).ok());
            (
                ord,
                Image {
                    text,
                    rec,
                    old_text,
                    old,
                },
            )
        })
        .collect()
}

/// Steps 2–5 of the module note.
fn route(
    entity: pg_sys::Oid,
    owner: pg_sys::Oid,
    eq_columns: &[String],
    action: Action,
    before: pg_sys::Snapshot,
    data: *mut pg_sys::TriggerData,
) {
    let rows = images(owner, action, data);
    let (candidates, meta) = identity::as_internal(|| {
        Spi::connect(|_| {
            let ords: Vec<i64> = rows.keys().copied().collect();
            let texts: Vec<&str> = rows.values().map(|image| image.text.as_str()).collect();
            let args = [
                entity.into_datum(),
                action.name().into_datum(),
                eq_columns.to_vec().into_datum(),
                ords.into_datum(),
                texts.into_datum(),
            ];
            let mut pairs: Vec<(i64, i64)> = Vec::new();
            let mut meta = None;
            // SAFETY: inside the SPI connection just opened; arguments match their types.
            unsafe {
                spi::run(MATCHES_SQL, &MATCHES_TYPES, &args, false, |row| {
                    pairs.push((
                        row.get(1).unwrap_or_default(),
                        row.get(2).unwrap_or_default(),
                    ))
                });
                if pairs.is_empty() {
                    return (Vec::new(), None);
                }
                // Each subscription's details once, not once per matched row.
                let by_id = subscribers(pairs.iter().map(|&(_, id)| id).collect());
                spi::run(
                    META_SQL,
                    &[pg_sys::OIDOID],
                    &[entity.into_datum()],
                    true,
                    |row| {
                        meta = Some(Meta {
                            schema: row.get(1).unwrap_or_default(),
                            table: row.get(2).unwrap_or_default(),
                            rls: row.get(3).unwrap_or_default(),
                            commit_timestamp: row.get(4).unwrap_or_default(),
                            entity_sql: row.get(5).unwrap_or_default(),
                            replica_identity_full: row.get(6).unwrap_or_default(),
                        })
                    },
                );
                let matches = pairs
                    .into_iter()
                    .filter_map(|(ord, id)| {
                        Some(Match {
                            ord,
                            subscription: id,
                            who: by_id.get(&id)?.clone(),
                        })
                    })
                    .collect::<Vec<_>>();
                (matches, meta)
            }
        })
    });
    let Some(meta) = meta else { return };
    let mut matches = passing_filters(entity, &meta.entity_sql, owner, action, data, candidates);
    if matches.is_empty() {
        return;
    }
    let change = Change {
        entity,
        owner,
        action,
        meta,
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

/// The candidates whose other filters pass, evaluated as the table's owner on the statement's
/// own rows (the transition table: INSERT/UPDATE the new rows, DELETE the deleted ones): one query
/// per filter shape (columns, operators, negations) over every (row, subscription) pair of that
/// shape, the filter values as parameters. A shape that cannot be evaluated any more (a column
/// dropped or retyped since subscribing, a value that no longer casts) matches nothing, with a
/// WARNING, and never aborts the writer's statement.
fn passing_filters(
    entity: pg_sys::Oid,
    entity_sql: &str,
    owner: pg_sys::Oid,
    action: Action,
    data: *mut pg_sys::TriggerData,
    candidates: Vec<Match>,
) -> Vec<Match> {
    let (mut passing, filtered): (Vec<Match>, Vec<Match>) = candidates
        .into_iter()
        .partition(|m| m.who.filters.is_empty());
    if filtered.is_empty() {
        return passing;
    }
    let mut shapes: BTreeMap<Vec<Shape>, Vec<Match>> = BTreeMap::new();
    for m in filtered {
        shapes
            .entry(m.who.filters.iter().map(Condition::shape).collect())
            .or_default()
            .push(m);
    }
    let shapes: Vec<Vec<Match>> = shapes.into_values().collect();
    let table = if action == Action::Delete {
        "realtime_old"
    } else {
        "realtime_new"
    };
    let evaluate = |todo: &[Vec<Match>]| -> Vec<HashSet<(i64, i64)>> {
        Spi::connect(|client| {
            // SAFETY: `data` is the trigger's own TriggerData, alive for the whole call.
            unsafe { pg_sys::SPI_register_trigger_data(data) };
            let (_, columns) = filter::columns(client, entity)?;
            let rows = filter::transition_rows(table, &columns);
            let mut verdicts = Vec::with_capacity(todo.len());
            for shape in todo {
                let conditions = &shape[0].who.filters;
                let sql = filter::shape_sql(&rows, conditions, &columns)
                    .unwrap_or_else(|e| pgrx::error!("{e}"));
                let mut args: Vec<pgrx::datum::DatumWithOid> = vec![
                    shape.iter().map(|m| m.ord).collect::<Vec<_>>().into(),
                    shape
                        .iter()
                        .map(|m| m.subscription)
                        .collect::<Vec<_>>()
                        .into(),
                ];
                for i in 0..conditions.len() {
                    args.push(
                        shape
                            .iter()
                            .map(|m| m.who.filters[i].param())
                            .collect::<Vec<_>>()
                            .into(),
                    );
                }
                let mut kept = HashSet::new();
                for row in client.select(&sql, None, &args)? {
                    kept.insert((
                        row.get::<i64>(1)?.unwrap_or_default(),
                        row.get::<i64>(2)?.unwrap_or_default(),
                    ));
                }
                verdicts.push(kept);
            }
            Ok::<_, pgrx::spi::Error>(verdicts)
        })
        .unwrap_or_else(|err| pgrx::error!("{err}"))
    };
    let verdicts = identity::as_table_owner(owner, || {
        identity::in_subtransaction(|| evaluate(&shapes)).unwrap_or_else(|_| {
            shapes
                .iter()
                .map(|shape| {
                    identity::in_subtransaction(|| evaluate(std::slice::from_ref(shape)).remove(0)).unwrap_or_else(|err| {
                        pgrx::warning!("pg_realtime: a filter on {entity_sql} failed ({err}); change not delivered to it");
                        HashSet::new()
                    })
                })
                .collect()
        })
    });
    for (shape, kept) in shapes.into_iter().zip(verdicts) {
        passing.extend(
            shape
                .into_iter()
                .filter(|m| kept.contains(&(m.ord, m.subscription))),
        );
    }
    passing
}

struct Change {
    entity: pg_sys::Oid,
    owner: pg_sys::Oid,
    action: Action,
    meta: Meta,
    before: pg_sys::Snapshot,
    /// Columns as each role sees them, loaded once per role per statement.
    columns: RefCell<HashMap<String, Rc<Vec<Column>>>>,
    /// Checks by row set and side (datums in the trigger's memory context).
    probes: RefCell<HashMap<(Vec<i64>, Side), Probe>>,
}

type Verdict = (HashSet<i64>, Option<&'static str>);

impl Change {
    /// Privileges and RLS per (role, claims) group, then one queue row per (change, sidecar,
    /// column view) listing every subscription that may see it.
    fn deliver(&self, groups: &[&[Match]], rows: &BTreeMap<i64, Image>) {
        // Inserted and updated rows are checked as they are after the statement: one snapshot
        // for all groups, taken once the statement's changes are visible.
        let verdicts = if self.action == Action::Delete {
            self.check_groups(groups, rows, Side::Current, self.before)
        } else {
            let after = identity::register_fresh_snapshot();
            let verdicts = self.check_groups(groups, rows, Side::Current, after);
            identity::release_snapshot(after);
            verdicts
        };
        // An UPDATE's whole old row goes only to groups that could see it before the statement.
        let old_verdicts =
            (self.action == Action::Update && self.meta.replica_identity_full && self.meta.rls)
                .then(|| self.check_groups(groups, rows, Side::Old, self.before));
        type View<'m> = (
            i64,
            &'m str,
            &'m str,
            Option<&'m Vec<String>>,
            Option<&'static str>,
            bool,
        );
        let mut out: BTreeMap<View, Vec<i64>> = BTreeMap::new();
        for (i, (group, (visible, error))) in groups.iter().zip(&verdicts).enumerate() {
            for m in group.iter().filter(|m| visible.contains(&m.ord)) {
                let old_visible = old_verdicts
                    .as_ref()
                    .is_none_or(|v| v[i].0.contains(&m.ord));
                let who = &m.who;
                let view = (
                    m.ord,
                    who.sidecar.as_str(),
                    who.role.as_str(),
                    who.selected.as_ref(),
                    *error,
                    old_visible,
                );
                out.entry(view).or_default().push(m.subscription);
            }
        }
        for ((ord, sidecar, role, selected, error, old_visible), subscriptions) in out {
            let Some(image) = rows.get(&ord) else {
                continue;
            };
            let columns = self.columns_for(role);
            let old = image.old.as_ref().map(|o| (o, old_visible));
            let data = self.data(&columns, selected, &image.rec, old, error);
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

    /// Each group's visible rows (`side` images) and the error its subscribers get instead of
    /// records. All RLS checks run in one subtransaction; if any fails, each group runs in its
    /// own, so a failing policy hides the change from its own group only.
    fn check_groups(
        &self,
        groups: &[&[Match]],
        rows: &BTreeMap<i64, Image>,
        side: Side,
        snapshot: pg_sys::Snapshot,
    ) -> Vec<Verdict> {
        let checks: Vec<Check> = groups
            .iter()
            .map(|g| self.plan_check(g, rows, side))
            .collect();
        if checks.iter().all(|c| c.query.is_none()) {
            return checks.iter().map(Check::unchecked).collect();
        }
        identity::in_subtransaction(|| run_checks(&checks, snapshot)).unwrap_or_else(|_| {
            checks
                .iter()
                .map(|check| {
                    identity::in_subtransaction(|| run_checks(std::slice::from_ref(check), snapshot))
                        .map(|mut verdicts| verdicts.remove(0))
                        .unwrap_or_else(|err| {
                            pgrx::warning!(
                                "pg_realtime: the policies of {} failed for role {} ({err}); change not delivered to it",
                                self.meta.entity_sql,
                                check.role
                            );
                            (HashSet::new(), None)
                        })
                })
                .collect()
        })
    }

    /// What checking one group takes: its error (no primary key, primary key not selectable),
    /// or the RLS query to run for its rows. Under RLS, a row that cannot be checked reaches
    /// nobody: not even an error may tell a subscriber about a row its policy could hide.
    fn plan_check(&self, group: &[Match], rows: &BTreeMap<i64, Image>, side: Side) -> Check {
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
        let checkable = !pk.is_empty() && pk.iter().all(|c| !c.type_name.is_empty());
        if self.meta.rls && !checkable {
            check.ords.clear();
        } else if pk.is_empty() {
            check.error = Some("Error 400: Bad Request, no primary key");
        } else if !checkable {
            check.error = Some("Error 401: Unauthorized");
        } else if self.meta.rls {
            check.query = Some(self.probe_for(&check.ords, &pk, rows, side));
        }
        check
    }

    /// The check of `ords`, built once per statement, row set and side: groups without filters
    /// all check the same rows. The keys are typed arrays taken out of the row images here (as
    /// the table's owner: the key types' input functions are the table's code), so a check does
    /// no JSON work and its lookup is a primary key index probe (the LIMIT keeps it one whatever
    /// the generic plan thinks of the table's size).
    fn probe_for(
        &self,
        ords: &[i64],
        pk: &[&Column],
        rows: &BTreeMap<i64, Image>,
        side: Side,
    ) -> Probe {
        let key = (ords.to_vec(), side);
        if let Some(probe) = self.probes.borrow().get(&key) {
            return probe.clone();
        }
        let images: Vec<&str> = ords.iter().map(|ord| rows[ord].text(side)).collect();
        let entity_sql = &self.meta.entity_sql;
        let keys_sql = format!(
            "select pg_catalog.array_agg(r.ord order by r.ord), {}
               from rows from (pg_catalog.unnest($1::pg_catalog.int8[]), pg_catalog.unnest($2::pg_catalog.text[])) r(ord, rec)",
            pk.iter()
                .map(|c| format!(
                    "pg_catalog.array_agg((pg_catalog.jsonb_populate_record(null::{entity_sql}, \
                     r.rec::pg_catalog.jsonb)).{} order by r.ord)",
                    c.quoted
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let (types, args) =
            identity::as_table_owner(self.owner, || key_arrays(&keys_sql, ords, images));
        let columns: Vec<String> = (0..pk.len()).map(|i| format!("k{i}")).collect();
        let params: Vec<String> = (1..=types.len())
            .map(|i| format!("pg_catalog.unnest(${i})"))
            .collect();
        let condition = pk
            .iter()
            .zip(&columns)
            .map(|(c, k)| format!("t.{} OPERATOR(pg_catalog.=) k.{k}", c.quoted))
            .collect::<Vec<_>>()
            .join(" and ");
        let sql = format!(
            "select k.ord from rows from ({}) k(ord, {})
               cross join lateral (select 1 from {entity_sql} t where {condition} limit 1) hit",
            params.join(", "),
            columns.join(", "),
        );
        let probe = Probe {
            sql: sql.into(),
            types: types.into(),
            args: args.into(),
        };
        self.probes.borrow_mut().insert(key, probe.clone());
        probe
    }

    fn columns_for(&self, role: &str) -> Rc<Vec<Column>> {
        if let Some(columns) = self.columns.borrow().get(role) {
            return columns.clone();
        }
        let columns = Rc::new(self.columns(role));
        self.columns
            .borrow_mut()
            .insert(role.to_owned(), columns.clone());
        columns
    }

    /// Columns in attnum order; `type_name` is empty for a column `role` may not select.
    fn columns(&self, role: &str) -> Vec<Column> {
        let mut columns = Vec::new();
        let args = [self.entity.into_datum(), role.into_datum()];
        identity::as_internal(|| {
            Spi::connect(|_| {
                // SAFETY: inside the SPI connection just opened; arguments match their types.
                unsafe {
                    spi::run(
                        COLUMNS_SQL,
                        &[pg_sys::OIDOID, pg_sys::TEXTOID],
                        &args,
                        true,
                        |row| {
                            columns.push(Column {
                                name: row.get(1).unwrap_or_default(),
                                quoted: row.get(2).unwrap_or_default(),
                                type_name: row.get(3).unwrap_or_default(),
                                is_pk: row.get(4).unwrap_or_default(),
                            })
                        },
                    )
                }
            })
        });
        columns
    }

    /// The change as a subscriber sees it. `old`: the old row and whether the subscriber may see
    /// it whole (REPLICA IDENTITY FULL: every selectable column; otherwise the primary key).
    fn data(
        &self,
        columns: &[Column],
        selected: Option<&Vec<String>>,
        rec: &Value,
        old: Option<(&Value, bool)>,
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
                .map(|c| {
                    (
                        c.name.clone(),
                        image.get(&c.name).cloned().unwrap_or(Value::Null),
                    )
                })
                .collect()
        };
        let mut data = Map::new();
        data.insert("schema".into(), self.meta.schema.clone().into());
        data.insert("table".into(), self.meta.table.clone().into());
        data.insert(
            "commit_timestamp".into(),
            self.meta.commit_timestamp.clone().into(),
        );
        data.insert("type".into(), self.action.name().into());
        let cols: Vec<Value> = shown
            .iter()
            .map(|c| json!({ "name": c.name, "type": c.type_name }))
            .collect();
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
                let old_record = match old {
                    Some((image, true)) => pick(image, !self.meta.replica_identity_full),
                    _ => Map::new(),
                };
                data.insert("old_record".into(), old_record.into());
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

impl Check {
    /// The verdict of a check that needs no query.
    fn unchecked(&self) -> Verdict {
        (self.ords.iter().copied().collect(), self.error)
    }
}

/// Every check, in order (`checks` sorted by role): one executor per role and query, its
/// groups run one after another with their claims set, as the group's role.
fn run_checks(checks: &[Check], snapshot: pg_sys::Snapshot) -> Vec<Verdict> {
    let mut verdicts = Vec::with_capacity(checks.len());
    let mut start = 0;
    while start < checks.len() {
        let Some(probe) = &checks[start].query else {
            verdicts.push(checks[start].unchecked());
            start += 1;
            continue;
        };
        let role = &checks[start].role;
        let end = checks[start..]
            .iter()
            .position(|c| &c.role != role || c.query.as_ref().is_none_or(|q| q.sql != probe.sql))
            .map_or(checks.len(), |n| start + n);
        match identity::role_oid(role).filter(|oid| !identity::is_superuser(*oid)) {
            None => verdicts.extend((start..end).map(|_| (HashSet::new(), None))),
            Some(oid) => identity::as_subscriber(oid, || {
                identity::with_active_snapshot(snapshot, || {
                    let mut runs = None;
                    for check in &checks[start..end] {
                        let claims: Value =
                            serde_json::from_str(&check.claims).unwrap_or(Value::Null);
                        identity::set_local("request.jwt.claims", &check.claims);
                        identity::set_local(
                            "request.jwt.claim.sub",
                            claims
                                .get("sub")
                                .and_then(Value::as_str)
                                .unwrap_or_default(),
                        );
                        identity::set_local(
                            "request.jwt.claim.role",
                            claims
                                .get("role")
                                .and_then(Value::as_str)
                                .unwrap_or_default(),
                        );
                        // Opened with the first group's claims set: planning may evaluate the
                        // policies' stable expressions (for estimates only).
                        // SAFETY: inside the caller's subtransaction, whose resource owner and memory
                        // context stay current until `close` (or its abort cleans up).
                        let runs = runs.get_or_insert_with(|| unsafe {
                            Runs::open(&probe.sql, &probe.types, snapshot)
                        });
                        let args = check
                            .query
                            .as_ref()
                            .map(|q| q.args.clone())
                            .unwrap_or_default();
                        // SAFETY: the arguments match the types the probe was opened with.
                        verdicts.push((unsafe { runs.run(&args) }, None));
                    }
                    if let Some(runs) = runs {
                        // SAFETY: no error happened since it was opened.
                        unsafe { runs.close() };
                    }
                })
            }),
        }
        start = end;
    }
    verdicts
}

/// Runs `sql` (`$1` the ords, `$2` their row images as text) returning one row of arrays; their
/// types and values, copied out of SPI.
fn key_arrays(
    sql: &str,
    ords: &[i64],
    images: Vec<&str>,
) -> (Vec<pg_sys::Oid>, Vec<Option<pg_sys::Datum>>) {
    let (mut types, mut values) = (Vec::new(), Vec::new());
    let args = [ords.to_vec().into_datum(), images.into_datum()];
    Spi::connect(|_| {
        // SAFETY: inside the SPI connection just opened; arguments match their types.
        unsafe {
            spi::run(
                sql,
                &[pg_sys::INT8ARRAYOID, pg_sys::TEXTARRAYOID],
                &args,
                true,
                |row| {
                    for n in 1..=row.columns() {
                        types.push(row.type_of(n));
                        values.push(row.transfer(n));
                    }
                },
            )
        }
    });
    (types, values)
}

/// `realtime.enable(entity)` (sql/changes.sql): capture the table's changes. Only its owner may,
/// as for ALTER TABLE; the capture triggers are then created by the extension.
#[pg_extern(sql = false)]
fn enable(entity: pg_sys::Oid) {
    set_capture(
        entity,
        "select realtime._capture_on($1::pg_catalog.regclass, 'enable')",
    );
}

/// `realtime.disable(entity)`: stop capturing the table's changes (owner only).
#[pg_extern(sql = false)]
fn disable(entity: pg_sys::Oid) {
    set_capture(
        entity,
        "select realtime._capture_off($1::pg_catalog.regclass)",
    );
}

fn set_capture(entity: pg_sys::Oid, sql: &str) {
    if !identity::owns(entity) {
        // SAFETY: get_rel_name returns a palloc'd name or null for a relation that is gone.
        let name = unsafe {
            let name = pg_sys::get_rel_name(entity);
            if name.is_null() {
                format!("{entity:?}")
            } else {
                std::ffi::CStr::from_ptr(name)
                    .to_string_lossy()
                    .into_owned()
            }
        };
        crate::error::RealtimeError::NotOwner(name).report();
    }
    identity::as_internal(|| Spi::run_with_args(sql, &[entity.into()]))
        .unwrap_or_else(|err| pgrx::error!("pg_realtime: {err}"));
}
