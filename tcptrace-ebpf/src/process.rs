//! Process exit: `sched:sched_process_exit` fires in do_exit() before the descriptor table is
//! dropped; only the last thread of a process is reported.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tcptrace_common::KIND_EXIT;

use crate::{
    filter::process_matches,
    kernel::current_group_dead,
    maps::{current_event, emit},
};

#[tracepoint]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    let event = current_event(KIND_EXIT);
    let group_dead = match current_group_dead() {
        Ok(dead) => dead,
        // Without BTF offsets: the thread-group leader stands for the process.
        Err(_) => event.pid == event.tid,
    };
    if group_dead && process_matches(event.pid, &event.comm) {
        emit(&event);
    }
    0
}
