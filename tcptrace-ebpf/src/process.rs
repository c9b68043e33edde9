//! Process lifetime: `sched:sched_process_exit`, `sched_process_fork` and `sched_process_exec`
//! (include/trace/events/sched.h; fields read by offset, see each program).
//!
//! `sched_process_exit` fires in do_exit() (kernel/exit.c) before exit_files() drops the
//! descriptor table; only the last thread of a process is reported.
//!
//! In tracepoint mode this is also where exit releases are found: every descriptor still open
//! that holds the last reference to a TCP socket is released by this exit. A scan here, rather
//! than the state change tcp_close() makes later, also catches sockets that are already in
//! CLOSE (reset by the peer) or whose close changes no state, and a socket inherited across
//! fork() is released by whichever process drops the last reference.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel_str_bytes},
    macros::tracepoint,
    programs::TracePointContext,
};
use tcptrace_common::{
    CLOSE_HOOK_TRACEPOINT, COUNTER_FOLLOW_FULL, COUNTER_LOST_EVENTS, COUNTER_SENT_EVENTS,
    KIND_EXEC, KIND_EXIT, RELEASE_EXIT, RawExec, STACKS_USER,
};

use crate::{
    filter::{following, process_matches},
    kernel::{FdTable, current_group_dead},
    loops::{Body, each},
    maps::{
        EVENTS, FOLLOWED, FP_PROCS, PY_PROCS, ReadFailed, SETTINGS, close_hook, count,
        current_event, emit, finish, global, wakeup,
    },
    release::release_if_last,
};

/// Descriptors examined at exit. bpf_loop() keeps the verifier's cost independent of this.
const EXIT_SCAN_MAX: u32 = 1 << 16;

#[tracepoint]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    #[cfg(feature = "bench")]
    if crate::bench::active() {
        return 0;
    }
    finish(on_exit())
}

#[inline(always)]
fn on_exit() -> Result<(), ReadFailed> {
    let group_dead = report_exit();
    let mut result = Ok(());
    // After the exit event, as with fentry and kprobe, where exit_files() runs tcp_close().
    if group_dead && close_hook() == CLOSE_HOOK_TRACEPOINT {
        match FdTable::current() {
            Ok(Some(table)) => {
                let n =
                    if table.max_fds() < EXIT_SCAN_MAX { table.max_fds() } else { EXIT_SCAN_MAX };
                each(n, &mut ExitScan { table });
            }
            Ok(None) => {}
            Err(e) => result = Err(e),
        }
    }
    // The kernel side forgets an interpreter itself: user space hears only of the exits the
    // filters pass, and a reused pid must not be walked with a dead process's layout.
    if group_dead && global!(SETTINGS.stacks) & STACKS_USER != 0 {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        let _ = PY_PROCS.remove(&tgid);
        let _ = FP_PROCS.remove(&tgid);
    }
    // Last, so the exit and its releases above still pass the filter.
    if following() {
        let pid_tgid = bpf_get_current_pid_tgid();
        let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
        if tid != tgid {
            let _ = FOLLOWED.remove(tid);
        }
        if group_dead {
            let _ = FOLLOWED.remove(tgid);
        }
    }
    result
}

/// `tcptrace run`: a child of a followed task is followed from its first instruction, before it
/// can exec or connect. Runs in the parent, in kernel_clone() (kernel/fork.c).
#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    #[cfg(feature = "bench")]
    if crate::bench::active() {
        return 0;
    }
    finish(follow_child(&ctx))
}

#[inline(always)]
fn follow_child(ctx: &TracePointContext) -> Result<(), ReadFailed> {
    if !following() {
        return Ok(());
    }
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: plain map read.
    if unsafe { FOLLOWED.get(parent) }.is_none() {
        return Ok(());
    }
    // `child_pid`'s offset moved when the comm fields became `__data_loc` strings; user space
    // reads it from this kernel's tracepoint format.
    let offset = global!(SETTINGS.fork_child_pid) as usize;
    // SAFETY: the offset comes from this kernel's tracepoint format, and the read is checked.
    let child = unsafe { ctx.read_at::<i32>(offset) }?;
    if FOLLOWED.insert(child as u32, 1, 0).is_err() {
        count(COUNTER_FOLLOW_FULL);
    }
    Ok(())
}

/// An exec replaces every mapping under the same pid: user space drops the symbols it cached
/// for it. Only stacks need this, so it is only reported with stacks on. Fired by exec_binprm()
/// (fs/exec.c) once the new image is in place.
#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    #[cfg(feature = "bench")]
    if crate::bench::active() {
        return 0;
    }
    finish(report_exec(&ctx))
}

#[inline(always)]
fn report_exec(ctx: &TracePointContext) -> Result<(), ReadFailed> {
    if global!(SETTINGS.stacks) == 0 {
        return Ok(());
    }
    let event = current_event(KIND_EXEC);
    if !process_matches(event.pid, &event.comm) {
        return Ok(());
    }
    // Before the reservation (the verifier wants no fallible step between reserve and submit
    // that could skip the submit); the record goes out without its path if this fails.
    // SAFETY: the offset is the tracepoint format's (see `EXEC_FILENAME_FIELD`).
    let loc = unsafe { ctx.read_at::<u32>(EXEC_FILENAME_FIELD) }.map_err(ReadFailed::from);
    // Written in place: with the path it is too large for the BPF stack.
    let Some(mut record) = EVENTS.reserve::<RawExec>(0) else {
        count(COUNTER_LOST_EVENTS);
        return loc.map(|_| ());
    };
    let exec = record.as_mut_ptr();
    let mut copied = loc.map(|_| ());
    // SAFETY: `exec` points at reserved ring memory the size of a RawExec; the filename is
    // the record's `__data_loc` string (offset in the low 16 bits, from the record start).
    unsafe {
        (*exec).event = event;
        (*exec).filename[0] = 0;
        if let Ok(loc) = loc {
            let src = ctx.as_ptr().cast::<u8>().add((loc & 0xffff) as usize);
            if bpf_probe_read_kernel_str_bytes(src, &mut (*exec).filename).is_err() {
                copied = Err(ReadFailed);
            }
        }
    }
    record.submit(wakeup());
    count(COUNTER_SENT_EVENTS);
    copied
}

/// Offset of `filename` in `sched:sched_process_exec` records (a `__data_loc char[]`): the
/// first field, on every kernel that has the tracepoint (3.4+).
const EXEC_FILENAME_FIELD: usize = 8;

/// Emits the exit event if the whole process is exiting; returns whether it is. Without BTF
/// offsets, or if reading that fails (counted here: a subprogram returns one scalar), the
/// thread-group leader stands for the process.
///
/// A subprogram of its own: the verifier limits the stack of a call chain to 512 bytes, and
/// 6.1 counts this program's frame together with the bpf_loop() callback's (the release path,
/// about 370 bytes). Kept out of line, the event's 112 bytes are not in that chain.
#[inline(never)]
fn report_exit() -> bool {
    let event = current_event(KIND_EXIT);
    let dead = current_group_dead();
    let group_dead = match dead {
        Ok(Some(dead)) => dead,
        Ok(None) | Err(_) => event.pid == event.tid,
    };
    if group_dead && process_matches(event.pid, &event.comm) {
        emit(&event);
    }
    finish::<u32>(dead.map(|_| ()));
    group_dead
}

/// The exit scan: one descriptor per iteration. A failed read is counted here, since the loop
/// has no way to hand it back.
struct ExitScan {
    table: FdTable,
}

impl Body for ExitScan {
    #[inline(always)]
    fn step(&mut self, index: u64) -> bool {
        finish::<i64>(release_if_last::<false>(&self.table, index as u32, RELEASE_EXIT));
        true
    }
}
