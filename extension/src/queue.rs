//! Commit-time hand-off into `realtime.queue`, and the reader functions the sidecar calls.
//!
//! Writer path (hot): `realtime.broadcast` / `_enqueue` only buffer (`pending`). At
//! `XACT_EVENT_PRE_COMMIT` the transaction reserves a seq range (`horizon::reserve`) and writes
//! its rows directly into the heap and index (callers need no rights on the internal table). At
//! commit or abort the reservation ends. No NOTIFY, no lock held across the commit's WAL flush.
//!
//! Reader path: `_poll` computes the horizon *before* it takes its snapshot, so every seq below
//! the horizon is either visible in that snapshot or belonged to an aborted transaction.
use pgrx::pg_sys::errcodes::PgSqlErrorCode;
use pgrx::prelude::*;
use pgrx::spi::Spi;
use pgrx::{AnyElement, IntoDatum, JsonB, Uuid};
use std::cell::Cell;
use std::ffi::c_void;

use crate::error::RealtimeError;
use crate::{guc, horizon, identity, pending, spi};

thread_local! {
    static HOLDS_SLOT: Cell<bool> = const { Cell::new(false) };
    static EPOCH: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
    static MESSAGES: Cell<Option<pg_sys::Oid>> = const { Cell::new(None) };
}

pub fn register_callbacks() {
    // SAFETY: called once, from _PG_init; the callbacks are pg_guard'ed functions of the
    // signature PostgreSQL expects, in a library that is never unloaded, and take no argument.
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_PRE_COMMIT => flush(),
        XACT_EVENT_PRE_PREPARE if pending::len() > 0 => RealtimeError::Prepare.report(),
        XACT_EVENT_COMMIT => finish(true),
        XACT_EVENT_ABORT
        | XACT_EVENT_PARALLEL_ABORT
        | XACT_EVENT_PREPARE
        | XACT_EVENT_PARALLEL_COMMIT => finish(false),
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    _sub: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut c_void,
) {
    // SAFETY: a read of the transaction state, which PostgreSQL calls us inside of.
    let level = unsafe { pg_sys::GetCurrentTransactionNestLevel() };
    match event {
        pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB => pending::abort_subxact(level),
        pg_sys::SubXactEvent::SUBXACT_EVENT_COMMIT_SUB => pending::commit_subxact(level),
        _ => {}
    }
}

fn finish(committed: bool) {
    pending::clear();
    crate::changes::on_xact_end(committed);
    if HOLDS_SLOT.replace(false) {
        horizon::release(committed);
    }
}

/// Runs `f` inside SPI as the bootstrap superuser (internal tables only), restoring the caller's
/// identity afterwards. Pre-commit has no active snapshot any more, so one is pushed for the
/// duration. On ERROR, transaction abort restores the user id, the snapshot stack and SPI.
fn as_owner<R>(f: impl FnOnce() -> R) -> R {
    identity::as_internal(|| identity::with_transaction_snapshot(|| Spi::connect(|_| f())))
}

/// Seeds the shared seq counter once per server lifetime (inside an SPI connection).
unsafe fn ensure_initialized() {
    if horizon::is_initialized() {
        return;
    }
    // SAFETY: inside the SPI connection this function's callers must have open; the query is a
    // NUL-terminated literal.
    let rc = unsafe {
        pg_sys::SPI_execute(
            c"select coalesce(max(seq), 0) from realtime.queue".as_ptr(),
            true,
            1,
        )
    };
    assert_eq!(
        rc,
        pg_sys::SPI_OK_SELECT as i32,
        "reading the queue's last seq failed"
    );
    // SAFETY: the SELECT succeeded and an aggregate without GROUP BY returns exactly one row,
    // so SPI_tuptable holds one tuple; its one column is int8, read as i64.
    let floor = unsafe {
        let tt = pg_sys::SPI_tuptable;
        let mut isnull = false;
        let d = pg_sys::SPI_getbinval(*(*tt).vals, (*tt).tupdesc, 1, &mut isnull);
        i64::from_datum(d, isnull).unwrap_or(0)
    };
    horizon::initialize(floor);
}

/// Column order of `realtime.queue` in sql/schema.sql.
const QUEUE_COLUMNS: usize = 10;

/// Pre-commit: reserve seqs in commit order and write this transaction's messages.
///
/// Rows go straight into the heap and the primary-key index (no SPI, no executor, no snapshot):
/// this runs in every broadcasting transaction and is most of what a broadcast costs.
fn flush() {
    if pending::len() == 0 {
        return;
    }
    let msgs = pending::take();
    if !horizon::is_initialized() {
        // SAFETY: as_owner runs the closure inside an SPI connection.
        as_owner(|| unsafe { ensure_initialized() });
    }
    let first = horizon::reserve(msgs.len());
    HOLDS_SLOT.set(true);
    // SAFETY: pre-commit still runs inside the transaction, so the relation can be opened and
    // locked (the locks are held to its end, hence NoLock at close). `values`/`nulls` hold one
    // datum per column (the count is asserted) of that column's type in sql/schema.sql's order;
    // the payload is a flat copy still alive in TopTransactionContext (heap_insert toasts what
    // is too large). `tuple` is ours until freed after index_insert, which reads the t_self that
    // simple_heap_insert filled in.
    unsafe {
        let rel = pg_sys::table_open(queue_oid(), pg_sys::RowExclusiveLock as i32);
        let desc = (*rel).rd_att;
        assert_eq!(
            (*desc).natts as usize,
            QUEUE_COLUMNS,
            "realtime.queue has an unexpected shape"
        );
        let pk = primary_key(rel);
        let pk_info = pg_sys::BuildIndexInfo(pk);
        let inserted_at = pg_sys::Datum::from(pg_sys::GetCurrentTransactionStartTimestamp());
        for (i, m) in msgs.iter().enumerate() {
            let seq = (first + i as i64).into_datum().unwrap();
            let none = pg_sys::Datum::from(0usize);
            let msg_id = m.msg_id.and_then(|u| u.into_datum());
            let origin = m.origin.and_then(|u| u.into_datum());
            let mut values = [
                seq,
                m.topic.as_str().into_datum().unwrap(),
                m.private.into_datum().unwrap(),
                m.extension.name().into_datum().unwrap(),
                m.event.as_str().into_datum().unwrap(),
                if m.binary { none } else { m.payload },
                if m.binary { m.payload } else { none },
                msg_id.unwrap_or(none),
                origin.unwrap_or(none),
                inserted_at,
            ];
            let mut nulls = [
                false,
                false,
                false,
                false,
                false,
                m.binary,
                !m.binary,
                msg_id.is_none(),
                origin.is_none(),
                false,
            ];
            let tuple = pg_sys::heap_form_tuple(desc, values.as_mut_ptr(), nulls.as_mut_ptr());
            pg_sys::simple_heap_insert(rel, tuple);
            let (mut key, mut key_null) = ([seq], [false]);
            pg_sys::index_insert(
                pk,
                key.as_mut_ptr(),
                key_null.as_mut_ptr(),
                &mut (*tuple).t_self,
                rel,
                pg_sys::IndexUniqueCheck::UNIQUE_CHECK_YES,
                false,
                pk_info,
            );
            pg_sys::heap_freetuple(tuple);
        }
        pg_sys::index_close(pk, pg_sys::NoLock as i32);
        pg_sys::table_close(rel, pg_sys::NoLock as i32);
    }
}

unsafe fn queue_oid() -> pg_sys::Oid {
    // SAFETY: catalog lookups by NUL-terminated names inside a transaction; missing_ok=false
    // raises if the extension's schema is gone.
    let oid = unsafe {
        let ns = pg_sys::get_namespace_oid(c"realtime".as_ptr(), false);
        pg_sys::get_relname_relid(c"queue".as_ptr(), ns)
    };
    assert!(oid != pg_sys::Oid::INVALID, "realtime.queue does not exist");
    oid
}

/// Opens the queue's only index, its primary key on `seq`. Anything else is refused: an index
/// added by hand would silently miss these rows.
unsafe fn primary_key(rel: pg_sys::Relation) -> pg_sys::Relation {
    // SAFETY: `rel` is open (the caller's contract). The index list is checked non-empty before
    // its first element is read, and the index is opened (so rd_index is valid) before indnatts
    // is checked and only then its first key column read.
    unsafe {
        let list = pg_sys::RelationGetIndexList(rel);
        assert!(
            !list.is_null() && (*list).length == 1,
            "realtime.queue must have exactly one index (its primary key)"
        );
        let pk = pg_sys::index_open(
            (*(*list).elements).oid_value,
            pg_sys::RowExclusiveLock as i32,
        );
        let index = &*(*pk).rd_index;
        assert!(
            index.indnatts == 1 && index.indkey.values.as_slice(1)[0] == 1,
            "realtime.queue's index must be on seq"
        );
        pk
    }
}

/// Buffers one message until commit. `payload` is jsonb (JSON frame) or bytea (binary frame).
/// `origin`: the sidecar that already delivered it to its own clients; `extension`: 'broadcast'
/// or 'presence' (a presence diff).
#[pg_extern(volatile, parallel_unsafe, name = "_enqueue")]
fn enqueue(
    topic: &str,
    event: &str,
    payload: Option<AnyElement>,
    private: bool,
    msg_id: Option<Uuid>,
    origin: default!(Option<Uuid>, "NULL"),
    extension: default!(&str, "'broadcast'"),
) {
    let Some(extension) = pending::Extension::parse(extension) else {
        RealtimeError::UnknownExtension(extension.into()).report()
    };
    let message = validate(topic, payload).unwrap_or_else(|err| err.report());
    queue(
        topic,
        event,
        message,
        pending::Envelope {
            private,
            msg_id,
            origin,
            extension,
        },
    );
}

/// A payload ready to queue: the datum and whether it is binary.
type Message = (pg_sys::Datum, bool);

fn validate(topic: &str, payload: Option<AnyElement>) -> Result<Message, RealtimeError> {
    if topic.is_empty() {
        return Err(RealtimeError::EmptyTopic);
    }
    let payload = payload.ok_or(RealtimeError::NullPayload)?;
    match payload.oid() {
        pg_sys::JSONBOID => Ok((payload.datum(), false)),
        pg_sys::BYTEAOID => Ok((payload.datum(), true)),
        other => Err(RealtimeError::PayloadType(type_name(other))),
    }
}

fn queue(topic: &str, event: &str, (payload, binary): Message, envelope: pending::Envelope) {
    pending::push(topic, event, payload, binary, envelope);
}

fn type_name(oid: pg_sys::Oid) -> String {
    // SAFETY: format_type_be returns a palloc'd NUL-terminated string for any type oid.
    unsafe {
        std::ffi::CStr::from_ptr(pg_sys::format_type_be(oid))
            .to_string_lossy()
            .into_owned()
    }
}

/// A send from SQL to a PRIVATE channel must pass the caller's INSERT policies on
/// realtime.messages, as a socket send does: a probe row (extension 'broadcast', the topic in
/// `realtime.topic`) is inserted as the caller in a subtransaction that is always rolled back.
/// The row fails the table's `realtime_send_probe` check, which PostgreSQL evaluates after the
/// INSERT policies and before writing anything: a check violation means the policies passed, and
/// no transaction id or WAL is spent on the probe. The statement is a kept plan. Roles that
/// bypass row-level security there are not checked, as PostgreSQL would not check them; the
/// probe is skipped for them, so their sends cost nothing more.
fn authorize_private_send(
    topic: &str,
    event: &str,
    id: Option<Uuid>,
    (payload, binary): Message,
) -> Result<(), RealtimeError> {
    if !identity::rls_applies(messages_oid()) {
        return Ok(());
    }
    let (sql, ty) = if binary {
        (
            "insert into realtime.messages (id, topic, extension, event, binary_payload, private)
             values ($1, $2, 'broadcast', $3, $4, true)",
            pg_sys::BYTEAOID,
        )
    } else {
        (
            "insert into realtime.messages (id, topic, extension, event, payload, private)
             values ($1, $2, 'broadcast', $3, $4, true)",
            pg_sys::JSONBOID,
        )
    };
    let types = [pg_sys::UUIDOID, pg_sys::TEXTOID, pg_sys::TEXTOID, ty];
    let id = id.unwrap_or_else(|| Uuid::from_bytes([0; 16]));
    let args = [
        id.into_datum(),
        topic.into_datum(),
        event.into_datum(),
        Some(payload),
    ];
    let probe = identity::trial(|| {
        identity::with_settings(
            &[("realtime.authorizing", "send"), ("realtime.topic", topic)],
            || {
                // SAFETY: inside the SPI connection just opened; `args` match `types` (`payload` is a
                // valid datum of type `ty` for the whole call).
                Spi::connect(|_| unsafe { spi::run(sql, &types, &args, false, |_| {}) })
            },
        )
    });
    match probe {
        Err((PgSqlErrorCode::ERRCODE_CHECK_VIOLATION, _)) | Ok(()) => Ok(()),
        Err((PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE, _)) => {
            Err(RealtimeError::PrivateSendDenied(topic.into()))
        }
        Err((_, message)) => Err(RealtimeError::SendFailed(message)),
    }
}

fn messages_oid() -> pg_sys::Oid {
    MESSAGES.with(|cached| {
        if let Some(oid) = cached.get() {
            return oid;
        }
        // SAFETY: catalog lookups by NUL-terminated names; missing_ok=false raises if the
        // extension's schema is gone.
        let oid = unsafe {
            let ns = pg_sys::get_namespace_oid(c"realtime".as_ptr(), false);
            pg_sys::get_relname_relid(c"messages".as_ptr(), ns)
        };
        cached.set(Some(oid));
        oid
    })
}

/// `realtime.broadcast` itself (declared in sql/api.sql): the writer's hot path, without the cost
/// of a SQL-language wrapper. Private messages obey the caller's INSERT policies.
#[pg_extern(sql = false)]
fn broadcast(topic: &str, event: &str, payload: Option<AnyElement>, private: bool) {
    let message = validate(topic, payload).unwrap_or_else(|err| err.report());
    if private {
        authorize_private_send(topic, event, None, message).unwrap_or_else(|err| err.report());
    }
    let envelope = pending::Envelope {
        private,
        msg_id: None,
        origin: None,
        extension: pending::Extension::Broadcast,
    };
    queue(topic, event, message, envelope);
}

/// `realtime.send` (sql/api.sql): Supabase's, adding a generated `id` to an object payload that
/// has none; errors become `WARNING WarnSendingBroadcastMessage`, so a trigger never aborts the
/// user's write because of it.
#[pg_extern(sql = false)]
fn send(payload: Option<AnyElement>, event: &str, topic: &str, private: bool) {
    send_message(payload, event, topic, private);
}

/// `realtime.send_binary` (sql/api.sql): `send` with raw bytes.
#[pg_extern(sql = false)]
fn send_binary(payload: Option<AnyElement>, event: &str, topic: &str, private: bool) {
    send_message(payload, event, topic, private);
}

fn send_message(payload: Option<AnyElement>, event: &str, topic: &str, private: bool) {
    // SAFETY: gen_random_uuid takes no arguments and returns a uuid datum.
    let id: Option<Uuid> = unsafe { pgrx::direct_function_call(pg_sys::gen_random_uuid, &[]) };
    let sent = validate(topic, payload).and_then(|(datum, binary)| {
        let message = if binary {
            (datum, true)
        } else {
            (with_id(datum, id), false)
        };
        if private {
            authorize_private_send(topic, event, id, message)?;
        }
        Ok(message)
    });
    match sent {
        Ok(message) => {
            let envelope = pending::Envelope {
                private,
                msg_id: id,
                origin: None,
                extension: pending::Extension::Broadcast,
            };
            queue(topic, event, message, envelope);
        }
        Err(err) => pgrx::warning!("WarnSendingBroadcastMessage: {}", err.message()),
    }
}

/// `payload || {"id": id}` for an object payload without an `id`; other payloads unchanged.
fn with_id(payload: pg_sys::Datum, id: Option<Uuid>) -> pg_sys::Datum {
    let Some(id) = id else { return payload };
    // SAFETY: jsonb_typeof, jsonb_exists and jsonb_concat take jsonb (and text) datums, which
    // `payload` and the built values are; they detoast their arguments themselves.
    unsafe {
        let kind: Option<String> =
            pgrx::direct_function_call(pg_sys::jsonb_typeof, &[Some(payload)]);
        if kind.as_deref() != Some("object") {
            return payload;
        }
        let has_id: Option<bool> =
            pgrx::direct_function_call(pg_sys::jsonb_exists, &[Some(payload), "id".into_datum()]);
        if has_id == Some(true) {
            return payload;
        }
        let extra = JsonB(serde_json::json!({ "id": id.to_string() })).into_datum();
        pgrx::direct_function_call_as_datum(pg_sys::jsonb_concat, &[Some(payload), extra])
            .unwrap_or(payload)
    }
}

/// Messages the current transaction will publish when it commits.
#[pg_extern(volatile, parallel_unsafe, name = "_pending")]
fn pending_count() -> i64 {
    pending::len() as i64
}

/// The queue's epoch: a uuid that changes when crash recovery empties the unlogged queue.
/// Cached per backend: a crash restarts every backend.
fn current_epoch() -> String {
    if let Some(e) = EPOCH.with_borrow(|e| e.clone()) {
        return e;
    }
    let epoch = Spi::connect_mut(|client| {
        client.update(
            "insert into realtime.queue_epoch default values on conflict do nothing",
            None,
            &[],
        )?;
        client
            .select("select epoch::text from realtime.queue_epoch", None, &[])?
            .first()
            .get_one::<String>()
    })
    .expect("reading realtime.queue_epoch failed")
    .expect("realtime.queue_epoch is empty");
    EPOCH.set(Some(epoch.clone()));
    epoch
}

fn ensure_initialized_spi() {
    if !horizon::is_initialized() {
        let floor = Spi::get_one::<i64>("select coalesce(max(seq), 0) from realtime.queue")
            .expect("reading the queue's last seq failed")
            .unwrap_or(0);
        horizon::initialize(floor);
    }
}

/// Where a new reader starts: the current epoch and the last seq that is already final.
#[pg_extern(volatile, parallel_unsafe, security_definer, name = "_position")]
fn position() -> TableIterator<'static, (name!(epoch, String), name!(head, i64))> {
    ensure_initialized_spi();
    TableIterator::once((current_epoch(), horizon::horizon() - 1))
}

type PollRow = (
    name!(epoch, String),
    name!(seq, i64),
    name!(topic, String),
    name!(private, bool),
    name!(event, String),
    name!(payload, Option<String>),
    name!(binary_payload, Option<Vec<u8>>),
    name!(msg_id, Option<String>),
    name!(origin, Option<String>),
    name!(extension, String),
);

/// Final rows after `after` in commit order. An empty answer registers the caller as idle, so
/// the next commit wakes the notifier (see `horizon` for why the re-read closes the race).
#[pg_extern(volatile, parallel_unsafe, security_definer, name = "_poll")]
#[allow(
    clippy::type_complexity,
    reason = "pg_extern reads the column names from the spelled-out tuple; PollRow is not accepted"
)]
fn poll(
    epoch: &str,
    after: i64,
    max_rows: i32,
) -> TableIterator<
    'static,
    (
        name!(epoch, String),
        name!(seq, i64),
        name!(topic, String),
        name!(private, bool),
        name!(event, String),
        name!(payload, Option<String>),
        name!(binary_payload, Option<Vec<u8>>),
        name!(msg_id, Option<String>),
        name!(origin, Option<String>),
        name!(extension, String),
    ),
> {
    // SAFETY: a plain read of the backend's isolation level.
    if unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32 {
        RealtimeError::SnapshotIsolation.report();
    }
    ensure_initialized_spi();
    let current = current_epoch();
    let after = if epoch == current { after } else { 0 };
    let mut rows = read_final(&current, after, max_rows);
    if rows.is_empty() {
        horizon::declare_idle();
        rows = read_final(&current, after, max_rows);
    }
    TableIterator::new(rows)
}

fn read_final(epoch: &str, after: i64, max_rows: i32) -> Vec<PollRow> {
    // The horizon is read before the query's snapshot is taken (a non-read-only SPI query in
    // READ COMMITTED gets a fresh snapshot).
    let below = horizon::horizon();
    if below <= after + 1 {
        return Vec::new();
    }
    Spi::connect_mut(|client| {
        let table = client.update(
            "select seq, topic, private, event, payload::text, binary_payload, msg_id::text,
                    origin::text, extension
               from realtime.queue where seq > $1 and seq < $2 order by seq limit $3",
            None,
            &[after.into(), below.into(), max_rows.max(1).into()],
        )?;
        let mut out = Vec::with_capacity(table.len());
        for row in table {
            out.push((
                epoch.to_owned(),
                row.get::<i64>(1)?.unwrap_or_default(),
                row.get::<String>(2)?.unwrap_or_default(),
                row.get::<bool>(3)?.unwrap_or_default(),
                row.get::<String>(4)?.unwrap_or_default(),
                row.get::<String>(5)?,
                row.get::<Vec<u8>>(6)?,
                row.get::<String>(7)?,
                row.get::<String>(8)?,
                row.get::<String>(9)?.unwrap_or_default(),
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .expect("reading realtime.queue failed")
}

/// Deletes messages past the retention window or beyond the size cap; keeps the newest row so
/// the seq counter can be re-seeded after a clean restart. Returns the number of rows deleted.
#[pg_extern(volatile, parallel_unsafe, security_definer, name = "_prune")]
pub fn prune() -> i64 {
    ensure_initialized_spi();
    let cap_floor = horizon::horizon() - guc::QUEUE_MAX_ROWS.get() as i64;
    Spi::connect_mut(|client| {
        let deleted = client.update(
            "with bounds as (
               select coalesce((select seq from realtime.queue
                                 where inserted_at >= now() - make_interval(secs => $1)
                                 order by seq limit 1), $2) as keep_from,
                      (select max(seq) from realtime.queue) as newest)
             delete from realtime.queue q using bounds b
              where q.seq < greatest(b.keep_from, $3) and q.seq < b.newest",
            None,
            &[
                (guc::QUEUE_RETENTION_S.get() as f64).into(),
                i64::MAX.into(),
                cap_floor.into(),
            ],
        )?;
        Ok::<_, pgrx::spi::Error>(deleted.len() as i64)
    })
    .expect("pruning realtime.queue failed")
}
