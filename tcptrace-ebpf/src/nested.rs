//! Catching the state changes the kernel keeps from `inet_sock_set_state_raw`: the map side of
//! `tcptrace_common::nested`, whose module docs explain the marks, the interleavings they
//! handle and the one window they cannot close (and its tests check each).

use aya_ebpf::helpers::bpf_ktime_get_ns;
use tcptrace_common::{ChangeId, StateMarks};

use crate::maps::STATE_MARKS;

/// This CPU's marks. The programs that use them run with preemption disabled on one CPU, and
/// the only code that can run between two uses is a softirq's run of the same two programs,
/// which `StateMarks`' two levels are made for.
#[inline(always)]
fn marks() -> Option<&'static mut StateMarks> {
    let marks = STATE_MARKS.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot of a per-CPU map, valid for the program's run; see above for who
    // else touches it meanwhile.
    Some(unsafe { &mut *marks })
}

/// Called by the first program first thing, for every change it runs for.
#[inline(always)]
pub fn first_runs(change: ChangeId) {
    if let Some(marks) = marks() {
        // SAFETY: helper with no preconditions.
        marks.first_runs(change, unsafe { bpf_ktime_get_ns() });
    }
}

/// Called by the second program: whether the kernel skipped the first for `change`.
#[inline(always)]
pub fn first_skipped(change: ChangeId) -> bool {
    marks().is_some_and(|marks| marks.first_skipped(change))
}
