//! Who the extension's code runs as, and under which settings. Every switch of the current user,
//! of the GUC nest level and of the active snapshot goes through this module.
//!
//! Invariants:
//! - [`as_internal`]: queries over the extension's own tables, calling built-in functions only,
//!   run as the bootstrap superuser with `search_path` pinned to `pg_catalog, pg_temp`, so the
//!   caller's session cannot slip its own functions or operators into them.
//! - [`as_table_owner`]: code that belongs to a user's table — its column types' input and output
//!   functions, casts, domain checks, operators — runs as the table's owner inside a
//!   security-restricted operation with the same pinned `search_path`: never with more privilege
//!   than the owner has, and unable to change session state (SET ROLE, temporary objects,
//!   LISTEN, …). PostgreSQL applies the same rule to index expressions and REFRESH MATERIALIZED
//!   VIEW.
//! - [`as_subscriber`]: row-level security policies run as the subscriber's role, also
//!   security-restricted, with the default `search_path` (`"$user", public`) and `pg_temp` last,
//!   so the writer's temporary objects never shadow what a policy names.
//! - Every switch is undone when the closure returns. On ERROR, (sub)transaction abort restores
//!   the user id, the security context, the GUC nest level and the snapshot stack, so callers
//!   need no cleanup of their own.
use pgrx::pg_sys;
use pgrx::pg_sys::errcodes::PgSqlErrorCode;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::PgTryBuilder;
use std::ffi::CString;

/// The search path of internal queries and of table owners' code.
const PINNED_PATH: &str = "pg_catalog, pg_temp";
/// The search path policies are evaluated with (PostgreSQL's default, temporary schema last).
const POLICY_PATH: &str = "\"$user\", public, pg_temp";

/// Runs `f` as the bootstrap superuser with the pinned search path.
pub fn as_internal<R>(f: impl FnOnce() -> R) -> R {
    as_user(
        pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID),
        false,
        PINNED_PATH,
        f,
    )
}

/// Runs `f` as `owner` (a table's owner), security-restricted, with the pinned search path.
pub fn as_table_owner<R>(owner: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    as_user(owner, true, PINNED_PATH, f)
}

/// Runs `f` as `role`, security-restricted, with the policies' search path.
pub fn as_subscriber<R>(role: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    as_user(role, true, POLICY_PATH, f)
}

fn as_user<R>(user: pg_sys::Oid, restricted: bool, search_path: &str, f: impl FnOnce() -> R) -> R {
    let (mut saved_user, mut saved_context) = (pg_sys::Oid::INVALID, 0);
    let mut context = pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32;
    if restricted {
        context |= pg_sys::SECURITY_RESTRICTED_OPERATION as i32;
    }
    // SAFETY: plain reads and writes of the backend's current user id and security context,
    // restored below; an ERROR in between is restored by (sub)transaction abort.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        pg_sys::SetUserIdAndSecContext(user, saved_context | context);
    }
    let result = with_settings(&[("search_path", search_path)], f);
    // SAFETY: restores exactly what was read above.
    unsafe { pg_sys::SetUserIdAndSecContext(saved_user, saved_context) };
    result
}

/// Settings under which row images and filter values are rendered, so that they read the same
/// whoever wrote them and an `eq` value rendered at subscribe time equals the row's.
const RENDERING: [(&str, &str); 5] = [
    ("TimeZone", "UTC"),
    ("DateStyle", "ISO, MDY"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "1"),
    ("bytea_output", "hex"),
];

/// Runs `f` with the rendering settings in force.
pub fn with_rendering<R>(f: impl FnOnce() -> R) -> R {
    with_settings(&RENDERING, f)
}

/// Runs `f` with `settings` (name, value) in force, in a GUC nest level of its own: whatever
/// `f` sets locally is undone on return, as for a function with SET clauses.
pub fn with_settings<R>(settings: &[(&str, &str)], f: impl FnOnce() -> R) -> R {
    // SAFETY: opens a GUC nest level that AtEOXact_GUC closes below (or transaction abort does).
    let nest = unsafe { pg_sys::NewGUCNestLevel() };
    for (name, value) in settings {
        set_local(name, value);
    }
    let result = f();
    // SAFETY: closes the level opened above. `false` restores every value set inside it: with
    // `true`, SET LOCAL values would outlive the level until the end of the caller's transaction.
    unsafe { pg_sys::AtEOXact_GUC(false, nest) };
    result
}

/// Sets `name` to `value` until the current GUC nest level ends (SET LOCAL). Names and values
/// come from the extension or from a stored subscription, never from the writer's session.
pub fn set_local(name: &str, value: &str) {
    let (Ok(name), Ok(value)) = (CString::new(name), CString::new(value)) else {
        return;
    };
    // SAFETY: both strings are NUL-terminated and outlive the call, which copies them.
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

/// A registered copy of the active snapshot (the current statement's), released by
/// [`release_snapshot`].
pub fn register_active_snapshot() -> pg_sys::Snapshot {
    // SAFETY: a trigger or function call always has an active snapshot; registering keeps it
    // alive until it is unregistered (or the resource owner releases it on abort).
    unsafe { pg_sys::RegisterSnapshot(pg_sys::GetActiveSnapshot()) }
}

/// A registered new snapshot that sees everything the current command has done so far.
pub fn register_fresh_snapshot() -> pg_sys::Snapshot {
    // SAFETY: the command counter increment makes this command's changes visible; the snapshot
    // is registered as above.
    unsafe {
        pg_sys::CommandCounterIncrement();
        pg_sys::RegisterSnapshot(pg_sys::GetTransactionSnapshot())
    }
}

pub fn release_snapshot(snapshot: pg_sys::Snapshot) {
    // SAFETY: `snapshot` was registered by one of the functions above and is released once.
    unsafe { pg_sys::UnregisterSnapshot(snapshot) }
}

/// Runs `f` with `snapshot` pushed as the active snapshot.
pub fn with_active_snapshot<R>(snapshot: pg_sys::Snapshot, f: impl FnOnce() -> R) -> R {
    // SAFETY: pushed here and popped below; abort pops what an ERROR leaves behind.
    unsafe { pg_sys::PushActiveSnapshot(snapshot) };
    let result = f();
    // SAFETY: pops the snapshot pushed above.
    unsafe { pg_sys::PopActiveSnapshot() };
    result
}

/// Runs `f` with the transaction's snapshot pushed as the active one (pre-commit has none).
pub fn with_transaction_snapshot<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: GetTransactionSnapshot is valid inside a transaction, which pre-commit still is.
    with_active_snapshot(unsafe { pg_sys::GetTransactionSnapshot() }, f)
}

/// The owner of relation `relid`; None if it does not exist.
pub fn relation_owner(relid: pg_sys::Oid) -> Option<pg_sys::Oid> {
    // SAFETY: the syscache lookup returns a tuple we release before returning; the form is
    // read only while it is held.
    unsafe {
        let tuple = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::RELOID as i32,
            pg_sys::Datum::from(relid),
        );
        if tuple.is_null() {
            return None;
        }
        let form = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_class>(tuple);
        let owner = (*form).relowner;
        pg_sys::ReleaseSysCache(tuple);
        Some(owner)
    }
}

/// The oid of role `name`; None if there is no such role.
pub fn role_oid(name: &str) -> Option<pg_sys::Oid> {
    let name = CString::new(name).ok()?;
    // SAFETY: NUL-terminated name; `missing_ok` makes an unknown role return InvalidOid.
    let oid = unsafe { pg_sys::get_role_oid(name.as_ptr(), true) };
    (oid != pg_sys::Oid::INVALID).then_some(oid)
}

/// Whether `role` is a superuser (such roles never evaluate a subscriber's checks).
pub fn is_superuser(role: pg_sys::Oid) -> bool {
    // SAFETY: a syscache-backed lookup of the role's attribute.
    unsafe { pg_sys::superuser_arg(role) }
}

/// Runs `f` in a subtransaction that is kept if `f` succeeds; an ERROR inside rolls it back and
/// yields its message. A cancellation, statement timeout or shutdown (SQLSTATE class 57) is not
/// a failure of `f`: it goes on to end the caller's statement.
pub fn in_subtransaction<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    subtransaction(true, f).map_err(|(_, message)| message)
}

/// Runs `f` in a subtransaction that is always rolled back (a probe whose effects must not
/// stay); an ERROR inside yields its SQLSTATE and message. Class 57 is rethrown as above.
pub fn trial<R>(f: impl FnOnce() -> R) -> Result<R, (PgSqlErrorCode, String)> {
    subtransaction(false, f)
}

fn subtransaction<R>(keep: bool, f: impl FnOnce() -> R) -> Result<R, (PgSqlErrorCode, String)> {
    // SAFETY: the subtransaction begun here is ended on both paths below, and the memory
    // context and resource owner it switched to are put back; an ERROR inside `f` is caught by
    // PgTryBuilder before anything else runs.
    unsafe {
        let context = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(context);
        // Boxed: the caught error is large, and is only inspected after the rollback below.
        let result = PgTryBuilder::new(std::panic::AssertUnwindSafe(|| Ok(f())))
            .catch_others(|e| Err(Box::new(e)))
            .execute();
        if keep && result.is_ok() {
            pg_sys::ReleaseCurrentSubTransaction();
        } else {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
        }
        pg_sys::MemoryContextSwitchTo(context);
        pg_sys::CurrentResourceOwner = owner;
        result.map_err(|caught| {
            let report = match &*caught {
                CaughtError::PostgresError(report) | CaughtError::ErrorReport(report) => report,
                CaughtError::RustPanic { ereport, .. } => ereport,
            };
            let class = |code: isize| code & 0xFFF;
            if class(report.sql_error_code() as isize)
                == class(PgSqlErrorCode::ERRCODE_QUERY_CANCELED as isize)
            {
                caught.rethrow();
            }
            (report.sql_error_code(), report.message().to_owned())
        })
    }
}

/// Whether the current user must pass row-level security on relation `relid` (not a
/// superuser, not BYPASSRLS, not its owner), as PostgreSQL itself decides.
pub fn rls_applies(relid: pg_sys::Oid) -> bool {
    // SAFETY: a catalog lookup for the current user; `noError` keeps it from raising.
    unsafe {
        pg_sys::check_enable_rls(relid, pg_sys::Oid::INVALID, true)
            == pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32
    }
}

/// Whether the current user owns relation `relid` (or is a member of its owner, or superuser).
pub fn owns(relid: pg_sys::Oid) -> bool {
    // SAFETY: a catalog lookup for the current user.
    unsafe { pg_sys::pg_class_ownercheck(relid, pg_sys::GetUserId()) }
}
