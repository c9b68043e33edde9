//! In-kernel filters (`--pid`, `--comm`, `--container`, `--cgroup`, `--port`, `-4`/`-6`,
//! `tcptrace run`'s process tree), configured by the `FILTER` global. The decisions are
//! `tcptrace_common::Filter`'s methods, shared with user space's inventory filter; this module
//! adds the `FOLLOWED` lookup and the cgroup helper.

use aya_ebpf::helpers::bpf_get_current_ancestor_cgroup_id;

use crate::maps::{FOLLOWED, filter};

/// `tcptrace run`: only the command and its descendants.
#[inline(always)]
pub fn following() -> bool {
    filter().follow != 0
}

/// Whether the process `tgid` running `comm` is one the user asked for.
#[inline(always)]
pub fn process_matches(tgid: u32, comm: &[u8; 16]) -> bool {
    let filter = filter();
    // SAFETY: plain map read; only looked up when it decides.
    let followed = filter.follow != 0 && unsafe { FOLLOWED.get(tgid) }.is_some();
    filter.process_matches(tgid, comm, followed, |level| {
        // SAFETY: a helper on the current task, allowed in every tracing program (5.11+).
        unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) }
    })
}

/// Whether a connection of `family` between `lport` and `rport` passes the address filters.
#[inline(always)]
pub fn addr_matches(family: u16, lport: u16, rport: u16) -> bool {
    filter().addr_matches(family, lport, rport)
}

/// Whether a process filter is on (`Filter::filters_process`).
#[inline(always)]
pub fn filters_process() -> bool {
    filter().filters_process()
}
