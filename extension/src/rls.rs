//! Row-level security checks of one statement's rows for many (role, claims) groups.
//!
//! Capture asks, for every group a change must be checked for, which of the statement's rows
//! the group may see: one query (`ords` out, primary keys in) run as the group's role with its
//! claims in `request.jwt.claims`. Starting an executor costs more than such a check, so the
//! groups of one role share one executor ([`Runs`]):
//! - the query's generic plan comes from the plan cache (kept, see `spi`; replanned for
//!   another role);
//! - a private copy of the plan is made to depend, in every node and subplan, on one extra
//!   executor parameter that nothing reads. Before each later run that parameter is marked
//!   changed and the plan rescanned, so every node recomputes what could depend on the claims —
//!   InitPlans such as `(select auth.uid())`, hashed `IN (subquery)` tables, materialized,
//!   sorted, hashed and memoized results — exactly as in a freshly started executor;
//! - plans containing a node outside a list whose rescans were checked for this (run-time
//!   partition pruning decided at executor start, custom and foreign scans, …) start a new
//!   executor per run instead: slower, never stale.
//!
//! The caller owns the identity, the GUCs and the active snapshot (`identity`): it switches to
//! the role, pushes the snapshot, sets the claims before each run and wraps everything in a
//! subtransaction. On ERROR nothing here needs cleaning up by hand: the subtransaction's abort
//! releases the plan and the executor's resources. Callers must not use a [`Runs`] after an
//! error.
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::collections::HashSet;
use std::ffi::{c_char, c_int, CString};

use crate::spi;

/// Many runs of one query returning `int8` ords, as the current user, with `snapshot`.
pub struct Runs {
    plan: *mut pg_sys::CachedPlan,
    stmt: *mut pg_sys::PlannedStmt,
    sql: *const c_char,
    snapshot: pg_sys::Snapshot,
    params: pg_sys::ParamListInfo,
    receiver: *mut Receiver,
    query: *mut pg_sys::QueryDesc,
    /// The parameter every node depends on; `None`: a new executor per run.
    rescan: Option<c_int>,
}

impl Runs {
    /// Prepare `sql` (parameters of `types`) for runs against `snapshot`.
    ///
    /// # Safety
    /// Inside a transaction, under the resource owner and memory context that will be current
    /// for every later call on the value.
    pub unsafe fn open(sql: &str, types: &[pg_sys::Oid], snapshot: pg_sys::Snapshot) -> Runs {
        pg_sys::SPI_connect();
        let source = spi::source(spi::kept(sql, types));
        pg_sys::SPI_finish();
        let plan = pg_sys::GetCachedPlan(
            source,
            std::ptr::null_mut(),
            pg_sys::CurrentResourceOwner,
            std::ptr::null_mut(),
        );
        let list = (*plan).stmt_list;
        if list.is_null() || (*list).length != 1 {
            pgrx::error!(
                "pg_realtime: the visibility check planned to {} statements",
                if list.is_null() { 0 } else { (*list).length }
            );
        }
        let mut stmt = (*(*list).elements).ptr_value as *mut pg_sys::PlannedStmt;
        let mut rescan = None;
        // SAFETY: every_plan hands out only non-null nodes of the statement's plan tree.
        if every_plan(stmt, |p| unsafe { rescannable(p) }) {
            stmt = pg_sys::copyObjectImpl(stmt.cast()).cast();
            let param = param_count(stmt);
            (*stmt).paramExecTypes = pg_sys::lappend_oid((*stmt).paramExecTypes, pg_sys::INT4OID);
            // SAFETY: non-null nodes of our private copy (the cached plan is not touched); the
            // enlarged sets are allocated in the current context, which outlives the value.
            every_plan(stmt, |p| unsafe {
                (*p).extParam = pg_sys::bms_add_member((*p).extParam, param);
                (*p).allParam = pg_sys::bms_add_member((*p).allParam, param);
                true
            });
            rescan = Some(param);
        } else {
            pgrx::debug1!("pg_realtime: the visibility check plan cannot be rescanned; one executor per group");
        }
        let params = pg_sys::makeParamList(types.len() as c_int);
        for (slot, ty) in (*params)
            .params
            .as_mut_slice(types.len())
            .iter_mut()
            .zip(types)
        {
            *slot = pg_sys::ParamExternData {
                value: pg_sys::Datum::from(0),
                isnull: true,
                pflags: 0,
                ptype: *ty,
            };
        }
        let receiver = pg_sys::palloc0(std::mem::size_of::<Receiver>()) as *mut Receiver;
        (*receiver).base = pg_sys::DestReceiver {
            receiveSlot: Some(receive),
            rStartup: Some(startup),
            rShutdown: Some(shutdown),
            rDestroy: Some(shutdown),
            mydest: pg_sys::CommandDest::DestNone,
        };
        let text = CString::new(sql).unwrap_or_default();
        Runs {
            plan,
            stmt,
            sql: pg_sys::pstrdup(text.as_ptr()),
            snapshot,
            params,
            receiver,
            query: std::ptr::null_mut(),
            rescan,
        }
    }

    /// One run with these parameter values, under the current user and GUCs.
    ///
    /// # Safety
    /// As [`Runs::open`]; `values` match the types given there (null datums are SQL NULLs).
    pub unsafe fn run(&mut self, values: &[Option<pg_sys::Datum>]) -> HashSet<i64> {
        let n = (*self.params).numParams as usize;
        for (slot, value) in (*self.params).params.as_mut_slice(n).iter_mut().zip(values) {
            slot.value = value.unwrap_or(pg_sys::Datum::from(0));
            slot.isnull = value.is_none();
        }
        match (self.query.is_null(), self.rescan) {
            (true, _) => self.start(),
            (false, Some(param)) => {
                let top = (*self.query).planstate;
                (*top).chgParam = pg_sys::bms_add_member((*top).chgParam, param);
                pg_sys::ExecReScan(top);
            }
            (false, None) => {
                self.finish();
                self.start();
            }
        }
        let mut ords = HashSet::new();
        (*self.receiver).ords = &mut ords;
        pg_sys::ExecutorRun(
            self.query,
            pg_sys::ScanDirection::ForwardScanDirection,
            0,
            false,
        );
        (*self.receiver).ords = std::ptr::null_mut();
        ords
    }

    /// Ends the executor and gives the plan back.
    ///
    /// # Safety
    /// As [`Runs::open`], after no error since.
    pub unsafe fn close(mut self) {
        if !self.query.is_null() {
            self.finish();
        }
        pg_sys::ReleaseCachedPlan(self.plan, pg_sys::CurrentResourceOwner);
    }

    unsafe fn start(&mut self) {
        self.query = pg_sys::CreateQueryDesc(
            self.stmt,
            self.sql,
            self.snapshot,
            std::ptr::null_mut(),
            self.receiver.cast(),
            self.params,
            std::ptr::null_mut(),
            0,
        );
        pg_sys::ExecutorStart(self.query, 0);
    }

    unsafe fn finish(&mut self) {
        pg_sys::ExecutorFinish(self.query);
        pg_sys::ExecutorEnd(self.query);
        pg_sys::FreeQueryDesc(self.query);
        self.query = std::ptr::null_mut();
    }
}

/// The next free executor parameter number.
unsafe fn param_count(stmt: *mut pg_sys::PlannedStmt) -> c_int {
    let types = (*stmt).paramExecTypes;
    if types.is_null() {
        0
    } else {
        (*types).length
    }
}

/// Calls `f` on every plan node of `stmt` (main tree and subplans) while it returns true.
unsafe fn every_plan(
    stmt: *mut pg_sys::PlannedStmt,
    mut f: impl FnMut(*mut pg_sys::Plan) -> bool,
) -> bool {
    let mut stack = vec![(*stmt).planTree];
    stack.extend(list_ptrs::<pg_sys::Plan>((*stmt).subplans));
    while let Some(plan) = stack.pop() {
        if plan.is_null() {
            continue;
        }
        if !f(plan) {
            return false;
        }
        stack.push((*plan).lefttree);
        stack.push((*plan).righttree);
        match (*plan).type_ {
            pg_sys::NodeTag::T_Append => {
                stack.extend(list_ptrs((*(plan as *mut pg_sys::Append)).appendplans))
            }
            pg_sys::NodeTag::T_MergeAppend => {
                stack.extend(list_ptrs((*(plan as *mut pg_sys::MergeAppend)).mergeplans))
            }
            pg_sys::NodeTag::T_BitmapAnd => {
                stack.extend(list_ptrs((*(plan as *mut pg_sys::BitmapAnd)).bitmapplans))
            }
            pg_sys::NodeTag::T_BitmapOr => {
                stack.extend(list_ptrs((*(plan as *mut pg_sys::BitmapOr)).bitmapplans))
            }
            pg_sys::NodeTag::T_SubqueryScan => {
                stack.push((*(plan as *mut pg_sys::SubqueryScan)).subplan)
            }
            _ => {}
        }
    }
    true
}

/// Node types whose rescan, with a changed parameter they depend on, recomputes everything
/// (checked against PostgreSQL 15's `ExecReScan*`). Partition pruning at executor start is
/// not redone on rescan, so Appends that prune are left out.
unsafe fn rescannable(plan: *mut pg_sys::Plan) -> bool {
    use pg_sys::NodeTag::*;
    match (*plan).type_ {
        T_Append => (*(plan as *mut pg_sys::Append)).part_prune_info.is_null(),
        T_MergeAppend => (*(plan as *mut pg_sys::MergeAppend))
            .part_prune_info
            .is_null(),
        T_Result | T_ProjectSet | T_BitmapAnd | T_BitmapOr | T_SeqScan | T_IndexScan
        | T_IndexOnlyScan | T_BitmapIndexScan | T_BitmapHeapScan | T_TidScan | T_TidRangeScan
        | T_SubqueryScan | T_FunctionScan | T_ValuesScan | T_CteScan | T_NestLoop | T_MergeJoin
        | T_HashJoin | T_Material | T_Memoize | T_Sort | T_IncrementalSort | T_Group | T_Agg
        | T_WindowAgg | T_Unique | T_Hash | T_SetOp | T_Limit => true,
        _ => false,
    }
}

unsafe fn list_ptrs<T>(list: *mut pg_sys::List) -> Vec<*mut T> {
    if list.is_null() {
        return Vec::new();
    }
    // SAFETY: `list` is non-null, `i` is below its length, and the caller's list holds pointers.
    (0..(*list).length as usize)
        .map(|i| unsafe { (*(*list).elements.add(i)).ptr_value.cast() })
        .collect()
}

/// Collects the first column (`int8`) of every row into `ords`.
#[repr(C)]
struct Receiver {
    base: pg_sys::DestReceiver,
    ords: *mut HashSet<i64>,
}

#[pg_guard]
unsafe extern "C-unwind" fn receive(
    slot: *mut pg_sys::TupleTableSlot,
    me: *mut pg_sys::DestReceiver,
) -> bool {
    let me = me as *mut Receiver;
    if (*slot).tts_nvalid < 1 {
        pg_sys::slot_getsomeattrs_int(slot, 1);
    }
    if !*(*slot).tts_isnull && !(*me).ords.is_null() {
        (*(*me).ords).insert((*(*slot).tts_values).value() as i64);
    }
    true
}

#[pg_guard]
unsafe extern "C-unwind" fn startup(
    _me: *mut pg_sys::DestReceiver,
    _operation: c_int,
    _desc: pg_sys::TupleDesc,
) {
}

#[pg_guard]
unsafe extern "C-unwind" fn shutdown(_me: *mut pg_sys::DestReceiver) {}
