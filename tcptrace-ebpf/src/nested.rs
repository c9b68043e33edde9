//! Catching the state changes the kernel keeps from `inet_sock_set_state_raw`.
//!
//! The kernel runs a raw tracepoint program at most once at a time per CPU (`prog->active`): a
//! change made by a softirq that interrupts the program on its CPU is skipped, counted only in
//! the program's `recursion_misses`. That happens whenever an interrupt lands while the program
//! handles a process-context change (connect() capturing its stacks, above all) and softirq work
//! is pending on the way out of it. So `inet_sock_set_state_nested` is attached to the same
//! tracepoint after it, and the kernel calls a tracepoint's programs in the order they were
//! attached. For every change the first program marks the change as its own (`first_runs`);
//! the second, running right after it for the same change, finds its mark and clears it
//! (`first_skipped` is false). A change the first did not run for has no mark: the second
//! handles it.
//!
//! Two marks, not one, because the second program can itself be interrupted between the
//! first's run and its own check for the same change: the first then runs for the interrupting
//! change and must not overwrite the pending mark (`inner`). Softirqs do not nest and hard
//! interrupts make no TCP state change, so two levels are all there are. The marks are per CPU
//! and tracepoint programs run with preemption disabled, so no other CPU or task touches them.
//!
//! What remains is a window of a few instructions that no program code can close: between the
//! second program clearing its mark and the kernel ending its run. A change made by an
//! interrupt there gets an `outer` mark that nobody checks (the second is skipped for it). Left
//! alone, that stale mark would leave one level of protection instead of two, and a later
//! skipped change with the same socket address and transition (slab reuse makes the same
//! address likely) would be taken as run. So `outer` ages out: a pending one waits only for the
//! changes of one softirq run, a few thousand at most, so after `OUTER_PENDING_MAX` inner marks
//! it is taken as stale and replaced. Whatever slips through is still not silent: a change
//! wrongly taken as run is a skip of the first program that `COUNTER_NESTED_CHANGES` does not
//! cover, so it shows in the missed runs user space reports (the first's `recursion_misses`
//! less the nested changes).

use aya_ebpf::{macros::map, maps::PerCpuArray};

/// One state change: a socket and the two states, never all zero (`skaddr` is a kernel address).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ChangeId {
    skaddr: u64,
    states: u64,
}

const _: () = assert!(size_of::<ChangeId>() == 16);

impl ChangeId {
    const NONE: Self = Self { skaddr: 0, states: 0 };

    #[inline(always)]
    pub fn new(skaddr: u64, old: u8, new: u8) -> Self {
        Self { skaddr, states: (u64::from(old) << 8) | u64::from(new) }
    }
}

/// The changes the first program ran for and the second has not checked yet.
#[repr(C)]
pub struct StateMarks {
    /// The first program's latest change.
    outer: ChangeId,
    /// A change the first program ran for while the second was checking `outer`.
    inner: ChangeId,
    /// Changes marked `inner` since `outer` was set.
    inner_marks: u64,
}

const _: () = assert!(size_of::<StateMarks>() == 40);

/// How many inner marks a pending `outer` can outlive: far more than one softirq run makes
/// (`netdev_budget`, 300 packets, per round and at most ten rounds), and about a second of
/// changes on a CPU churning 7000 connections a second.
const OUTER_PENDING_MAX: u64 = 1 << 16;

#[map]
static STATE_MARKS: PerCpuArray<StateMarks> = PerCpuArray::with_max_entries(1, 0);

/// Called by the first program first thing, for every change it runs for.
#[inline(always)]
pub fn first_runs(change: ChangeId) {
    let Some(marks) = STATE_MARKS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot; see the module docs for who else can run meanwhile.
    unsafe {
        if (*marks).outer == ChangeId::NONE || (*marks).inner_marks >= OUTER_PENDING_MAX {
            (*marks).outer = change;
            // Left over when the second was interrupted as above: checked by nobody since.
            (*marks).inner = ChangeId::NONE;
            (*marks).inner_marks = 0;
        } else {
            (*marks).inner = change;
            (*marks).inner_marks += 1;
        }
    }
}

/// Called by the second program: whether the kernel skipped the first for `change`. Clears the
/// first's mark when it did run.
#[inline(always)]
pub fn first_skipped(change: ChangeId) -> bool {
    let Some(marks) = STATE_MARKS.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: as in `first_runs`.
    unsafe {
        if (*marks).inner == change {
            (*marks).inner = ChangeId::NONE;
            false
        } else if (*marks).outer == change {
            (*marks).outer = ChangeId::NONE;
            false
        } else {
            true
        }
    }
}
