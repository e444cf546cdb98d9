//! Kept plans for the queries capture runs on every statement.
//!
//! Parsing and planning the routing queries cost more than running them, so each query text
//! (with its parameter types) is prepared once per backend and kept; the plan cache revalidates
//! a kept plan after DDL, after a change of search path and, for plans under RLS, for another
//! role. Plans are generic: a custom plan would be planned again on every call. Queries over a
//! statement's transition tables are never kept (their row type is not tracked by the plan
//! cache); they run through `pgrx::Spi`.
//!
//! Everything here runs inside an SPI connection the caller opened; the rows it hands out are
//! only valid until that connection's next query.
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, CString};

thread_local! {
    static KEPT: RefCell<HashMap<(String, Vec<pg_sys::Oid>), pg_sys::SPIPlanPtr>> =
        RefCell::new(HashMap::new());
}

/// The kept plan of `sql` with parameters of `types`, prepared on first use.
///
/// # Safety
/// Inside an SPI connection.
pub unsafe fn kept(sql: &str, types: &[pg_sys::Oid]) -> pg_sys::SPIPlanPtr {
    let key = (sql.to_owned(), types.to_vec());
    if let Some(plan) = KEPT.with_borrow(|kept| kept.get(&key).copied()) {
        return plan;
    }
    let text = CString::new(sql).unwrap_or_default();
    let mut types = types.to_vec();
    let plan = pg_sys::SPI_prepare_cursor(
        text.as_ptr(),
        types.len() as c_int,
        types.as_mut_ptr(),
        pg_sys::CURSOR_OPT_GENERIC_PLAN as c_int,
    );
    if plan.is_null() || pg_sys::SPI_keepplan(plan) != 0 {
        pgrx::error!("pg_realtime: preparing a routing query failed: {sql}");
    }
    KEPT.with_borrow_mut(|kept| kept.insert(key, plan));
    plan
}

/// The plan source behind a kept plan, for callers that run its plans themselves.
///
/// # Safety
/// `plan` comes from [`kept`].
pub unsafe fn source(plan: pg_sys::SPIPlanPtr) -> *mut pg_sys::CachedPlanSource {
    let sources = pg_sys::SPI_plan_get_plan_sources(plan);
    (*(*sources).elements).ptr_value.cast()
}

/// A row of the last query's result.
pub struct Row {
    tuple: pg_sys::HeapTuple,
    desc: pg_sys::TupleDesc,
}

impl Row {
    /// Column `n` (1-based), converted; None for NULL.
    pub fn get<T: FromDatum + IntoDatum>(&self, n: c_int) -> Option<T> {
        let ty = self.type_of(n);
        if !T::is_compatible_with(ty) {
            pgrx::error!(
                "pg_realtime: column {n} of a routing query has type {ty:?}, not the one read"
            );
        }
        let mut isnull = false;
        // SAFETY: a Row is only lent to `run`'s callback, while its tuple and descriptor are the
        // current SPI result's; a column number out of range comes back as NULL; `T` was checked
        // against the column's type above.
        unsafe {
            let datum = pg_sys::SPI_getbinval(self.tuple, self.desc, n, &mut isnull);
            T::from_datum(datum, isnull)
        }
    }

    /// Column `n` as a datum copied out of SPI into the caller's memory context (varlena types).
    pub fn transfer(&self, n: c_int) -> Option<pg_sys::Datum> {
        // SAFETY: a catalog lookup of the column's type.
        if unsafe { pg_sys::get_typlen(self.type_of(n)) } != -1 {
            pgrx::error!(
                "pg_realtime: column {n} of a routing query is not of a variable-length type"
            );
        }
        let mut isnull = false;
        // SAFETY: tuple and descriptor are valid as in `get`; the column's type is a varlena
        // (checked above), which is what SPI_datumTransfer(byval false, len -1) copies.
        unsafe {
            let datum = pg_sys::SPI_getbinval(self.tuple, self.desc, n, &mut isnull);
            (!isnull).then(|| pg_sys::SPI_datumTransfer(datum, false, -1))
        }
    }

    /// The type of column `n`.
    pub fn type_of(&self, n: c_int) -> pg_sys::Oid {
        // SAFETY: the descriptor is valid as in `get`; an out-of-range `n` yields InvalidOid.
        unsafe { pg_sys::SPI_gettypeid(self.desc, n) }
    }

    pub fn columns(&self) -> c_int {
        // SAFETY: the descriptor is valid as in `get`.
        unsafe { (*self.desc).natts }
    }
}

/// Runs the kept `sql` (parameters `args`, typed `types`) and hands each row to `each`.
/// `read_only`: run on the current snapshot, without a command counter increment.
///
/// # Safety
/// Inside an SPI connection; `args` match `types` (None = NULL).
pub unsafe fn run(
    sql: &str,
    types: &[pg_sys::Oid],
    args: &[Option<pg_sys::Datum>],
    read_only: bool,
    mut each: impl FnMut(&Row),
) {
    let plan = kept(sql, types);
    let mut values: Vec<pg_sys::Datum> = args
        .iter()
        .map(|a| a.unwrap_or(pg_sys::Datum::from(0)))
        .collect();
    let mut nulls: Vec<c_char> = args
        .iter()
        .map(|a| if a.is_some() { b' ' } else { b'n' } as c_char)
        .collect();
    let rc = pg_sys::SPI_execute_plan(plan, values.as_mut_ptr(), nulls.as_mut_ptr(), read_only, 0);
    if rc < 0 {
        pgrx::error!("pg_realtime: a routing query failed ({rc}): {sql}");
    }
    let table = pg_sys::SPI_tuptable;
    if table.is_null() {
        return;
    }
    for i in 0..pg_sys::SPI_processed as usize {
        each(&Row {
            tuple: *(*table).vals.add(i),
            desc: (*table).tupdesc,
        });
    }
}
