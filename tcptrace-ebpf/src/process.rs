//! Process exit: `sched:sched_process_exit` fires in do_exit() before exit_files() drops the
//! descriptor table; only the last thread of a process is reported.
//!
//! In tracepoint mode this is also where exit releases are found: every descriptor still open
//! that holds the last reference to a TCP socket is released by this exit. A scan here, rather
//! than the state change tcp_close() makes later, also catches sockets that are already in
//! CLOSE (reset by the peer) or whose close changes no state, and a socket inherited across
//! fork() is released by whichever process drops the last reference.

use core::ffi::c_void;

use aya_ebpf::{helpers::bpf_loop, macros::tracepoint, programs::TracePointContext};
use tcptrace_common::{CLOSE_HOOK_TRACEPOINT, KIND_EXEC, KIND_EXIT, RELEASE_EXIT};

use crate::{
    filter::process_matches,
    kernel::{FdTable, current_group_dead},
    maps::{SETTINGS, close_hook, current_event, emit, global},
    release::release_if_last,
};

/// Descriptors examined at exit. bpf_loop() keeps the verifier's cost independent of this.
const EXIT_SCAN_MAX: u32 = 1 << 16;

#[tracepoint]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    if !report_exit() {
        return 0;
    }
    // After the exit event, as with fentry and kprobe, where exit_files() runs tcp_close().
    if close_hook() == CLOSE_HOOK_TRACEPOINT
        && let Ok(mut table) = FdTable::current()
    {
        let n = if table.max_fds() < EXIT_SCAN_MAX { table.max_fds() } else { EXIT_SCAN_MAX };
        // SAFETY: the callback is a static BPF subprogram and `table` outlives the call.
        unsafe {
            bpf_loop(n, release_on_exit as *mut c_void, (&raw mut table).cast::<c_void>(), 0)
        };
    }
    0
}

/// An exec replaces every mapping under the same pid: user space drops the symbols it cached
/// for it. Only stacks need this, so it is only reported with stacks on.
#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    if global!(SETTINGS.stacks) == 0 {
        return 0;
    }
    let event = current_event(KIND_EXEC);
    if process_matches(event.pid, &event.comm) {
        emit(&event);
    }
    0
}

/// Emits the exit event if the whole process is exiting; returns whether it is.
///
/// A subprogram of its own: the verifier limits the stack of a call chain to 512 bytes, and
/// 6.1 counts this program's frame together with the bpf_loop() callback's (the release path,
/// about 370 bytes). Kept out of line, the event's 96 bytes are not in that chain.
#[inline(never)]
fn report_exit() -> bool {
    let event = current_event(KIND_EXIT);
    let group_dead = match current_group_dead() {
        Ok(dead) => dead,
        // Without BTF offsets: the thread-group leader stands for the process.
        Err(_) => event.pid == event.tid,
    };
    if group_dead && process_matches(event.pid, &event.comm) {
        emit(&event);
    }
    group_dead
}

/// bpf_loop() callback: one descriptor. Returns 0 to go on.
extern "C" fn release_on_exit(fd: u32, table: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer given above.
    let table = unsafe { &*table.cast::<FdTable>() };
    let _ = release_if_last(table, fd, RELEASE_EXIT);
    0
}
