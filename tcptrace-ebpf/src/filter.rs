//! In-kernel filters (`--pid`, `--comm`, `--port`, `-4`/`-6`), configured by the `FILTER` global.

use tcptrace_common::MAX_FILTER_PIDS;

use crate::maps::{FILTER, FOLLOWED, global};

#[inline(always)]
pub fn filters_process() -> bool {
    global!(FILTER.n_pids) != 0 || global!(FILTER.has_comm) != 0 || following()
}

/// `tcptrace run`: only the command and its descendants.
#[inline(always)]
pub fn following() -> bool {
    global!(FILTER.follow) != 0
}

/// Whether the process `tgid` running `comm` is one the user asked for.
#[inline(always)]
pub fn process_matches(tgid: u32, comm: &[u8; 16]) -> bool {
    if following() {
        // SAFETY: plain map read.
        return unsafe { FOLLOWED.get(&tgid) }.is_some();
    }
    let n_pids = global!(FILTER.n_pids) as usize;
    if n_pids != 0 {
        let mut found = false;
        for i in 0..MAX_FILTER_PIDS {
            if i < n_pids && global!(FILTER.pids[i]) == tgid {
                found = true;
            }
        }
        if !found {
            return false;
        }
    }
    if global!(FILTER.has_comm) != 0 {
        for (i, byte) in comm.iter().enumerate() {
            if global!(FILTER.comm[i]) != *byte {
                return false;
            }
        }
    }
    true
}

/// Whether a connection of `family` between `lport` and `rport` passes the address filters.
#[inline(always)]
pub fn addr_matches(family: u16, lport: u16, rport: u16) -> bool {
    let want_family = global!(FILTER.family);
    if want_family != 0 && want_family != family {
        return false;
    }
    let port = global!(FILTER.port);
    port == 0 || port == lport || port == rport
}
