//! The code path that opened a connection: user and kernel stacks captured at connect() and
//! accept(), in the opening thread, as ids into the `USER_STACKS` and `STACKS` maps.

use aya_ebpf::{
    EbpfContext, bindings::BPF_F_USER_STACK, helpers::generated::bpf_get_stackid,
    programs::tracing::StackIdContext,
};
use tcptrace_common::{COUNTER_STACK_FAILED, RawEvent, STACKS_KERNEL, STACKS_USER};

use crate::maps::{SETTINGS, STACKS, USER_STACKS, count, global};

/// Whether a hook's kernel stack says anything: inside connect() it is the TCP connect path;
/// at accept()'s return the call is over (and syscall tracepoints hand the kernel user-mode
/// registers, so 6.1 captures nothing there).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum KernelStack {
    Meaningful,
    Pointless,
}

/// Fills `event`'s stack ids as `--stacks` asks; a failed capture is counted, not fatal.
#[inline(always)]
pub fn capture<C: StackIdContext + EbpfContext>(
    ctx: &C,
    event: &mut RawEvent,
    kernel: KernelStack,
) {
    let wanted = global!(SETTINGS.stacks);
    if wanted & STACKS_USER != 0 {
        // SAFETY: a valid context and map; the helper checks everything else.
        let id = unsafe {
            bpf_get_stackid(ctx.as_ptr(), USER_STACKS.as_ptr(), u64::from(BPF_F_USER_STACK))
        };
        match i32::try_from(id) {
            Ok(id) if id >= 0 => event.user_stack = id,
            _ => count(COUNTER_STACK_FAILED),
        }
    }
    if wanted & STACKS_KERNEL != 0 && kernel == KernelStack::Meaningful {
        match ctx.get_stackid(&STACKS, 0) {
            Ok(id) => event.kernel_stack = id as i32,
            Err(_) => count(COUNTER_STACK_FAILED),
        }
    }
}
