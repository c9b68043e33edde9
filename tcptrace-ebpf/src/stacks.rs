//! The code path that opened a connection: user and kernel stacks captured at connect() and
//! accept(), in the opening thread, as ids into the `STACKS` map.

use aya_ebpf::{bindings::BPF_F_USER_STACK, programs::tracing::StackIdContext};
use tcptrace_common::{COUNTER_STACK_FAILED, RawEvent, STACKS_KERNEL, STACKS_USER};

use crate::maps::{SETTINGS, STACKS, count, global};

/// Fills `event`'s stack ids as `--stacks` asks; a failed capture is counted, not fatal.
#[inline(always)]
pub fn capture<C: StackIdContext>(ctx: &C, event: &mut RawEvent) {
    let wanted = global!(SETTINGS.stacks);
    if wanted & STACKS_USER != 0 {
        match ctx.get_stackid(&STACKS, u64::from(BPF_F_USER_STACK)) {
            Ok(id) => event.user_stack = id as i32,
            Err(_) => count(COUNTER_STACK_FAILED),
        }
    }
    if wanted & STACKS_KERNEL != 0 {
        match ctx.get_stackid(&STACKS, 0) {
            Ok(id) => event.kernel_stack = id as i32,
            Err(_) => count(COUNTER_STACK_FAILED),
        }
    }
}
